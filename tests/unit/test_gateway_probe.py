"""Reading vLLM's queue depth from its /metrics, as the gateway's own probe does."""

from __future__ import annotations

from appliance.gateway.probe import waiting_from_metrics

# Lines of a real vLLM 0.32 scrape (shared/reference/vllm-0.32-cpu-metrics.txt), with a second
# engine added: vLLM exports one series per engine core, and the queue is their sum.
SCRAPE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 7.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 5.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason. Reason labels: \
'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints \
(LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 99.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="deferred"} 99.0
"""


def test_waiting_requests_are_summed_over_engines_and_nothing_else() -> None:
    assert waiting_from_metrics(SCRAPE) == 12


def test_a_scrape_without_the_gauge_says_unknown() -> None:
    assert waiting_from_metrics("# TYPE te_queue_size gauge\nte_queue_size 4\n") is None
    assert waiting_from_metrics("") is None
