"""Prometheus and Grafana exports: valid documents whose every query names a metric that exists.

Metric names are checked against what the services really export, not against a list kept beside
the dashboard: vLLM's from a real vLLM 0.32 scrape (tests/fixtures/vllm-0.32-cpu-metrics.txt),
the gateway's from its own `GatewayMetrics`, TEI's from the engine double (TEI's router names),
and DCGM's from dcgm-exporter's `etc/default-counters.csv`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from appliance.exports import grafana, prometheus
from appliance.gateway.app import GatewayMetrics
from appliance.profile import load_profile
from tests.doubles.engine_double import SglangMetrics, TeiMetrics
from tests.support.tls import CERT_FILE, with_gateway_tls

ROOT = Path(__file__).resolve().parents[2]
VLLM_SCRAPE = ROOT / "tests" / "fixtures" / "vllm-0.32-cpu-metrics.txt"

# NVIDIA/dcgm-exporter etc/default-counters.csv: the fields it exports without configuration
# (commented-out lines of that file left out).
DCGM_DEFAULT_COUNTERS = frozenset(
    {
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_MEM_CLOCK",
        "DCGM_FI_DEV_MEMORY_TEMP",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
        "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "DCGM_FI_DEV_ENC_UTIL",
        "DCGM_FI_DEV_DEC_UTIL",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    }
)

_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset"}
)


def _sample_names(text: str) -> set[str]:
    """Series names exactly as exposed, which is how Prometheus stores them.

    prometheus_client's parser renames a counter's samples to `<name>_total`; TEI's counters have
    no `_total` and Prometheus keeps them so, hence the raw lines (after a check that they parse).
    """
    assert list(text_string_to_metric_families(text))
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    }


def _family_series(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry's families expose, whether or not a child exists yet."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    vllm = _sample_names(VLLM_SCRAPE.read_text(encoding="utf-8"))
    assert "vllm:kv_cache_usage_perc" in vllm
    assert "vllm:gpu_cache_usage_perc" not in vllm  # the pre-v1 name, gone in 0.32
    gateway = _family_series(GatewayMetrics(CollectorRegistry()).registry)
    tei_metrics = TeiMetrics()
    tei_metrics.observe(0.01)
    tei = _sample_names(tei_metrics.render().decode())
    sglang = _sample_names(SglangMetrics("chat").render().decode())
    assert "sglang:num_queue_reqs" in sglang
    return vllm | gateway | tei | sglang | DCGM_DEFAULT_COUNTERS


def metric_names(expression: str) -> list[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = re.sub(r'"[^"]*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    names = []
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or word in _PROMQL_WORDS:
            continue  # a function call or a keyword
        names.append(word)
    return names


def test_metric_name_extraction() -> None:
    expression = (
        "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket"
        '{model_name="x"}[5m]))) / sum(up{job="a"}) and on (instance) DCGM_FI_DEV_GPU_UTIL'
    )
    assert metric_names(expression) == [
        "vllm:e2e_request_latency_seconds_bucket",
        "up",
        "DCGM_FI_DEV_GPU_UTIL",
    ]


# ------------------------------------------------------------------------- grafana


def test_dashboard_is_valid_json_with_the_expected_panels() -> None:
    document = json.loads(grafana.grafana_export())
    titles = [panel["title"] for panel in document["panels"]]
    for wanted in (
        "Time to first token (p50, p95)",
        "Inter-token latency (p50, p95)",
        "Tokens per second",
        "Requests waiting and running",
        "KV cache usage",
        "GPU utilisation",
        "GPU memory used",
        "GPU temperature",
        "Fallback share",
    ):
        assert wanted in titles
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    positions = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in document["panels"]}
    assert len(positions) == len(ids)  # no two panels on top of each other
    assert document["templating"]["list"][0]["type"] == "datasource"
    for panel in document["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_quantile_panels_ask_for_p50_and_p95() -> None:
    document = grafana.dashboard()
    by_title = {panel["title"]: panel for panel in document["panels"]}
    for title in ("Time to first token (p50, p95)", "Inter-token latency (p50, p95)"):
        expressions = [target["expr"] for target in by_title[title]["targets"]]
        assert any(e.startswith("histogram_quantile(0.5,") for e in expressions)
        assert any(e.startswith("histogram_quantile(0.95,") for e in expressions)


def test_every_query_names_a_metric_that_exists(known_metrics: set[str]) -> None:
    expressions = grafana.queries(grafana.dashboard())
    assert expressions
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        unknown = [name for name in names if name not in known_metrics]
        assert not unknown, f"{expression}: {unknown} is not exported by any service"


def test_grafana_export_writes_the_file(tmp_path: Path) -> None:
    output = tmp_path / "dashboard.json"
    text = grafana.grafana_export(output=output)
    assert output.read_text(encoding="utf-8") == text


# ------------------------------------------------------------------------- prometheus


def test_scrape_config_covers_every_service() -> None:
    config = yaml.safe_load(prometheus.prometheus_export())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {
        prometheus.JOB_VLLM,
        prometheus.JOB_TEI,
        prometheus.JOB_GATEWAY,
        prometheus.JOB_DCGM,
    }
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets[prometheus.JOB_VLLM] == ["127.0.0.1:8000"]
    assert targets[prometheus.JOB_TEI] == ["127.0.0.1:8001"]
    assert targets[prometheus.JOB_GATEWAY] == ["127.0.0.1:8080"]
    assert targets[prometheus.JOB_DCGM] == ["127.0.0.1:9400"]
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
    assert config["global"]["scrape_interval"] == "15s"


@pytest.mark.parametrize("path", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_scrape_config_follows_the_profile(path: Path, tmp_path: Path) -> None:
    profile = load_profile(path)
    output = tmp_path / "prometheus.yml"
    prometheus.prometheus_export(profile, output=output)
    config = yaml.safe_load(output.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ports = profile.spec.ports
    assert jobs[prometheus.JOB_VLLM]["static_configs"][0]["targets"] == [f"127.0.0.1:{ports.vllm}"]
    assert (prometheus.JOB_TEI in jobs) == profile.spec.embeddings_enabled
    gateway = jobs[prometheus.JOB_GATEWAY]
    assert gateway.get("scheme", "http") == ("https" if profile.spec.gateway.tls else "http")
    labels = jobs[prometheus.JOB_VLLM]["static_configs"][0]["labels"]
    assert labels == {"appliance": profile.metadata.name, "role": "vllm"}


def test_an_https_gateway_is_scraped_trusting_its_own_certificate() -> None:
    # A gateway with its own (often self-signed) certificate: `scheme: https` alone makes
    # Prometheus check it against the system CAs, and every scrape fails verification.
    profile = with_gateway_tls(load_profile(ROOT / "profiles" / "rtx4090-chat.yaml"))
    text = prometheus.prometheus_export(profile)
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    gateway = jobs[prometheus.JOB_GATEWAY]
    assert gateway["scheme"] == "https"
    # The certificate is the trust anchor, as for the appliance's own calls (gateway_trust);
    # verification stays on.
    assert gateway["tls_config"] == {"ca_file": str(CERT_FILE)}
    # The certificate is the operator's, so its name is not known here: the file says what
    # Prometheus checks and what to set when the certificate names a host, not 127.0.0.1.
    header = text.split("\nglobal:")[0]
    assert "must name 127.0.0.1" in header
    assert "server_name" in header
    assert "insecure_skip_verify" not in text
    for name, job in jobs.items():
        if name != prometheus.JOB_GATEWAY:
            assert "tls_config" not in job


def test_a_plain_http_gateway_has_no_tls_config() -> None:
    text = prometheus.prometheus_export(load_profile(ROOT / "profiles" / "rtx4090-chat.yaml"))
    assert "tls_config" not in text
    assert "server_name" not in text


def test_the_dcgm_exporter_hint_names_a_real_pinned_image() -> None:
    # #16 item 17: the hint said `dcgm-exporter:<tag>`, which no one can run.
    text = prometheus.prometheus_export(None)
    assert "<tag>" not in text
    assert prometheus.DCGM_EXPORTER_IMAGE in text
    assert re.fullmatch(
        r"nvcr\.io/nvidia/k8s/dcgm-exporter:\d+\.\d+\.\d+-\d+\.\d+\.\d+-\S+",
        prometheus.DCGM_EXPORTER_IMAGE,
    )


@pytest.mark.parametrize(
    ("gateway_host", "host", "target"),
    [
        ("0.0.0.0", "127.0.0.1", "127.0.0.1"),  # every address: the scrape host given
        ("0.0.0.0", "10.1.2.3", "10.1.2.3"),
        ("10.0.0.5", "127.0.0.1", "10.0.0.5"),  # one address: only there does it answer
        ("10.0.0.5", "192.168.1.9", "10.0.0.5"),
        ("fd00::5", "127.0.0.1", "[fd00::5]"),
    ],
)
def test_the_gateway_is_scraped_where_it_listens(gateway_host: str, host: str, target: str) -> None:
    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    gateway = profile.spec.gateway.model_copy(update={"host": gateway_host})
    profile = profile.model_copy(
        update={"spec": profile.spec.model_copy(update={"gateway": gateway})}
    )
    jobs = {
        job["job_name"]: job
        for job in prometheus.prometheus_config(profile, host=host)["scrape_configs"]
    }
    port = profile.spec.ports.gateway
    assert jobs[prometheus.JOB_GATEWAY]["static_configs"][0]["targets"] == [f"{target}:{port}"]
    assert jobs[prometheus.JOB_VLLM]["static_configs"][0]["targets"] == [
        f"{host}:{profile.spec.ports.vllm}"
    ]
