"""`appliance export prometheus`: a `prometheus.yml` that scrapes everything the box runs.

Four jobs: vLLM and TEI (their own `/metrics`), the gateway (`appliance_gateway_*`), and NVIDIA's
DCGM exporter for the GPUs (`DCGM_FI_DEV_*`, port 9400 by default). Engines listen on 127.0.0.1
only, so this Prometheus runs on the box itself (or the targets are changed to an address it can
reach). The job names are the ones the Grafana dashboard (`appliance.exports.grafana`) filters
on, so the two exports work together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from appliance.fileio import write_output as write_text
from appliance.gateway.config import gateway_host
from appliance.profile import PortsSpec, Profile

__all__ = [
    "DCGM_EXPORTER_PORT",
    "JOB_DCGM",
    "JOB_GATEWAY",
    "JOB_TEI",
    "JOB_VLLM",
    "prometheus_config",
    "prometheus_export",
    "prometheus_text",
]

DCGM_EXPORTER_PORT: Final = 9400  # dcgm-exporter's default listen address is :9400
JOB_VLLM: Final = "llm-appliance-vllm"
JOB_TEI: Final = "llm-appliance-tei"
JOB_GATEWAY: Final = "llm-appliance-gateway"
JOB_DCGM: Final = "dcgm-exporter"
# NVIDIA/dcgm-exporter's latest release tag (4.5.3-4.8.2 = DCGM 4.5.3, exporter 4.8.2), as its
# README's Quickstart runs it (github.com/NVIDIA/dcgm-exporter, README.md at d5e5f51, May 2026).
DCGM_EXPORTER_IMAGE: Final = "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-distroless"


def _job(
    name: str, target: str, labels: dict[str, str], *, ca_file: Path | None = None
) -> dict[str, Any]:
    """One scrape job; with `ca_file`, over HTTPS trusting that certificate file."""
    job: dict[str, Any] = {"job_name": name, "metrics_path": "/metrics"}
    if ca_file is not None:
        job["scheme"] = "https"
        # Prometheus's <tls_config> (prometheus.io/docs/prometheus/latest/configuration/
        # configuration/#tls_config): `ca_file` is the "CA certificate to validate API server
        # certificate with"; `server_name` and `insecure_skip_verify` are left out (see
        # _tls_note). Go's crypto/x509 accepts a leaf that is itself in that pool
        # (verify.go: `if opts.Roots.contains(c)`), so the gateway's own certificate chain
        # file anchors a self-signed certificate as well as one from a private CA.
        job["tls_config"] = {"ca_file": str(ca_file)}
    job["static_configs"] = [{"targets": [target], "labels": labels}]
    return job


def prometheus_config(
    profile: Profile | None = None,
    *,
    host: str = "127.0.0.1",
    dcgm_target: str | None = None,
    scrape_interval_s: int = 15,
) -> dict[str, Any]:
    """The scrape config as a mapping. Without a profile, the default ports and every job."""
    ports = profile.spec.ports if profile is not None else PortsSpec()
    name = profile.metadata.name if profile is not None else "llm-appliance"
    labels = {"appliance": name}
    tls = profile.spec.gateway.tls if profile is not None else None
    jobs = [_job(JOB_VLLM, f"{host}:{ports.vllm}", {**labels, "role": "vllm"})]
    if profile is None or profile.spec.embeddings_enabled:
        jobs.append(_job(JOB_TEI, f"{host}:{ports.tei}", {**labels, "role": "tei"}))
    # The gateway may listen on one address only (spec.gateway.host); it answers nowhere else.
    gateway_at = gateway_host(profile, host) if profile is not None else host
    jobs.append(
        _job(
            JOB_GATEWAY,
            f"{gateway_at}:{ports.gateway}",
            {**labels, "role": "gateway"},
            ca_file=tls.cert_file if tls is not None else None,
        )
    )
    jobs.append(
        _job(JOB_DCGM, dcgm_target or f"{host}:{DCGM_EXPORTER_PORT}", {**labels, "role": "gpu"})
    )
    return {
        "global": {
            "scrape_interval": f"{scrape_interval_s}s",
            "evaluation_interval": f"{scrape_interval_s}s",
        },
        "scrape_configs": jobs,
    }


def _tls_note(config: dict[str, Any]) -> str:
    """What Prometheus checks of the gateway's certificate, for the header.

    The certificate is the operator's (spec.gateway.tls.cert_file), issued for whatever name
    they chose, and this export reads no files, so which names it carries is not known here.
    Prometheus verifies that it names the target's host; a name of the operator's cannot be
    guessed, and `insecure_skip_verify` would drop the check of the certificate as well,
    so the header says what to set instead of the config setting something wrong.
    """
    for job in config["scrape_configs"]:
        tls_config = job.get("tls_config")
        if tls_config is not None:
            address = job["static_configs"][0]["targets"][0].rpartition(":")[0]
            return (
                f"# The gateway serves HTTPS: {job['job_name']} trusts its certificate\n"
                f"#   {tls_config['ca_file']} (tls_config.ca_file, readable by Prometheus),\n"
                f"# which must name {address} (e.g. subjectAltName "
                f"IP:{address.strip('[]')}). If it names a host\n"
                "# instead, add `server_name: <that name>` under that job's tls_config.\n"
            )
    return ""


def prometheus_text(config: dict[str, Any]) -> str:
    header = (
        "# Prometheus scrape config for llm-appliance (`appliance export prometheus`).\n"
        "# Engines listen on 127.0.0.1: run Prometheus on the box, or change the targets.\n"
        "# GPU metrics need NVIDIA's dcgm-exporter (listens on :9400 by default), e.g.\n"
        "#   docker run -d --gpus all --cap-add SYS_ADMIN -p 127.0.0.1:9400:9400 "
        f"{DCGM_EXPORTER_IMAGE}\n"
    )
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return header + _tls_note(config) + body


def prometheus_export(
    profile: Profile | None = None,
    *,
    output: Path | None = None,
    host: str = "127.0.0.1",
    dcgm_target: str | None = None,
    scrape_interval_s: int = 15,
) -> str:
    """`appliance export prometheus [PROFILE] [-o FILE]`: the text; also written to `output`."""
    text = prometheus_text(
        prometheus_config(
            profile, host=host, dcgm_target=dcgm_target, scrape_interval_s=scrape_interval_s
        )
    )
    if output is not None:
        write_text(output, text)
    return text
