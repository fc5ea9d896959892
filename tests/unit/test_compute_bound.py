"""#14 part 4: decode speed a card can reach, the slower of its bandwidth and compute bounds."""

from __future__ import annotations

import pytest

from appliance.catalog import load_catalog
from appliance.hardware import detect_box
from appliance.recommend import COMPUTE_EFFICIENCY, Workload, recommend

CATALOG = load_catalog()


def test_a_4090_no_longer_promises_9000_tokens_per_second_from_a_7b_model() -> None:
    workload = Workload.for_kind("chat", users=200, context=131072)
    ranked = recommend(detect_box(simulate="rtx4090"), workload)
    spec = CATALOG.gpu("rtx4090")
    assert spec is not None
    for candidate in ranked.candidates:
        model = CATALOG.model(candidate.model_key)
        assert model is not None
        active = model.active_params_billion or model.params_billion
        tflops = spec.tflops_for(candidate.quantization)
        assert tflops is not None
        # 2 FLOPs per active parameter per token, at the stated share of the dense peak.
        ceiling = tflops * 1e12 * COMPUTE_EFFICIENCY * candidate.tensor_parallel_size
        assert candidate.decode.tokens_per_second_total <= ceiling / (2 * active * 1e9) * 1.001
    # Before the compute bound: qwen2.5-7b AWQ first at ~9,043 tokens/s on one 4090. (The top
    # is now an MoE with 3.6 B active parameters, whose ceiling is higher: the loop above.)
    sevens = [c for c in ranked.candidates if c.model_key == "qwen2.5-7b-instruct"]
    assert sevens
    assert all(c.decode.tokens_per_second_total < 8000 for c in sevens)
    awq = next(
        c
        for c in ranked.candidates
        if (c.model_key, c.quantization) == ("qwen2.5-7b-instruct", "awq")
    )
    # INT4 runs W4A16 on the 16-bit tensor cores: 165.2 dense TFLOP/s on a 4090.
    assert awq.decode.bound == "compute"
    assert awq.decode.tokens_per_second_total < 6000
    assert "compute-bound: 2 x 7.62 B active parameters per token against 165.2 dense" in awq.why
    assert "the slower of the two bounds applies" in ranked.decode_model


def test_one_user_on_a_big_card_stays_bandwidth_bound() -> None:
    workload = Workload.for_kind("chat", users=1, context=8192)
    top = recommend(detect_box(simulate="h200"), workload).top
    assert top.decode.bound == "memory bandwidth"
    assert "(memory-bandwidth-bound)" in top.why


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.key)
def test_every_compute_figure_is_dense_and_sourced(gpu: object) -> None:
    from appliance.catalog import GpuSpec

    assert isinstance(gpu, GpuSpec)
    if gpu.dense_tflops is None:
        return
    assert gpu.compute_source
    assert "dense" in gpu.compute_source
    assert gpu.dense_tflops.bf16 > 0
    if gpu.dense_tflops.fp8 is not None:
        assert gpu.fp8
        assert gpu.dense_tflops.fp8 >= gpu.dense_tflops.bf16
