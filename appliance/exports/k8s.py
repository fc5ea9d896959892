"""`appliance export k8s PROFILE -o DIR`: the same profile on a Kubernetes cluster.

The distributed path is an existing engine, not a home-made cluster: plain manifests that a GPU
cluster with the NVIDIA device plugin (and KEDA and Prometheus for autoscaling) runs as they are,
or Helm values for vLLM's own production-stack chart (`--format production-stack`).

Manifests (`manifests` format), one file per object, applied with `kubectl apply -f DIR`:

- the weights on a PersistentVolumeClaim (ReadWriteMany, so every vLLM replica mounts it), filled
  once by a Job in the layout the engines read (`/models/<org>/<name>/<revision>`);
- the vLLM Deployment: the very image, arguments and environment `runtime.specs` gives Docker
  (so flags cannot drift between the box and the cluster), `nvidia.com/gpu` equal to the tensor
  parallel size, startup/readiness/liveness probes on `/health`, the weights read-only, a memory
  /dev/shm for tensor-parallel workers; its Service and a PodDisruptionBudget (minAvailable 1);
- a KEDA ScaledObject that scales vLLM on `vllm:num_requests_waiting` through Prometheus, with a
  five-minute scale-down cooldown (reference article 001): `cooldownPeriod: 300` for scale-to-zero,
  and the HPA's `scaleDown.stabilizationWindowSeconds: 300`, which is what KEDA uses between 1 and
  N replicas;
- TEI's Deployment and Service when the profile has embeddings;
- the gateway: the profile in a ConfigMap, a small state volume (keys, fallback mode), a
  Deployment and a Service; when it serves TLS, its certificate and key from a TLS Secret
  mounted where the profile names them, probed and annotated for scraping as HTTPS.

What must stay true: no secret value is ever written. The Hugging Face token, the remote API key,
the admin key and the gateway's TLS key are referenced by Secret name and key (`kubectl create
secret …` lines are in the README the export writes), never embedded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

import yaml

from appliance import __version__
from appliance.catalog import Catalog, load_catalog
from appliance.errors import BadInputError
from appliance.hardware.box import Box
from appliance.profile import Profile, dump_profile
from appliance.runtime.model import ContainerSpec
from appliance.runtime.specs import (
    CONTAINER_MODELS_DIR,
    TEI_CONTAINER_PORT,
    VLLM_CONTAINER_PORT,
    SpecOptions,
    container_specs,
    engine_container_port,
    engine_image_choice,
    vllm_command,
)
from appliance.vocabulary import weights_path

__all__ = [
    "DEFAULT_PROMETHEUS_ADDRESS",
    "GATEWAY_CONTAINER_PORT",
    "K8sFormat",
    "K8sOptions",
    "box_for_export",
    "gateway_args",
    "k8s_export",
    "manifests",
    "production_stack_values",
]

K8sFormat = Literal["manifests", "production-stack"]
DEFAULT_PROMETHEUS_ADDRESS: Final = "http://prometheus-operated.monitoring.svc:9090"
GATEWAY_CONTAINER_PORT: Final = 8080
_GIB: Final = 1024**3
_SCALE_DOWN_COOLDOWN_S: Final = 300  # article 001: "Pair it with a 5-minute scale-down cooldown"
_VLLM_STARTUP_BUDGET_S: Final = 1800  # as runtime.specs gives Docker: a 70B load takes minutes
_PROFILE_MOUNT: Final = PurePosixPath("/etc/llm-appliance")


@dataclass(frozen=True)
class K8sOptions:
    """Cluster-side choices the profile does not make."""

    namespace: str = "llm-appliance"
    min_replicas: int = 2  # article 001: "2 replicas minimum", so one can be disrupted
    max_replicas: int = 4
    storage_class: str | None = None  # None: the cluster's default (must offer ReadWriteMany)
    models_storage_gib: int | None = None  # None: from the catalog's weight sizes, plus room
    prometheus_address: str = DEFAULT_PROMETHEUS_ADDRESS
    queue_threshold: int | None = None  # waiting requests per replica; None: the profile's
    gateway_image: str = f"llm-appliance:{__version__}"
    gateway_replicas: int = 1  # its state (fallback mode) is on a ReadWriteOnce volume

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace):
            raise BadInputError(
                f"{self.namespace!r} is not a Kubernetes namespace name",
                hint="use lowercase letters, digits and '-', e.g. llm-appliance",
            )
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise BadInputError(
                f"replicas {self.min_replicas}..{self.max_replicas} is not a range",
                hint="give 0 <= min replicas <= max replicas, max at least 1",
            )


# ------------------------------------------------------------------------------ helpers


def _labels(profile: Profile, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"{profile.metadata.name}-{role}",
        "app.kubernetes.io/instance": profile.metadata.name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": "llm-appliance",
        "app.kubernetes.io/managed-by": "llm-appliance-export",
    }


def _selector(profile: Profile, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": profile.metadata.name,
        "app.kubernetes.io/component": role,
    }


def _keda_replicas(options: K8sOptions) -> dict[str, int]:
    """The replica bounds and cadence KEDA scales vLLM with, in both export formats."""
    return {
        "minReplicaCount": options.min_replicas,
        "maxReplicaCount": options.max_replicas,
        "pollingInterval": 15,
        "cooldownPeriod": _SCALE_DOWN_COOLDOWN_S,
    }


def _meta(profile: Profile, role: str, name: str, options: K8sOptions) -> dict[str, Any]:
    return {"name": name, "namespace": options.namespace, "labels": _labels(profile, role)}


def _name(profile: Profile, role: str) -> str:
    return f"{profile.metadata.name}-{role}"


def _http_probe(
    port: str, *, period_s: int, failure_threshold: int, timeout_s: int = 5, https: bool = False
) -> dict[str, Any]:
    # With scheme HTTPS the kubelet does not verify the certificate (its prober is built with
    # InsecureSkipVerify, kubernetes pkg/probe/http/http.go), so a self-signed one is fine here.
    get: dict[str, Any] = {"path": "/health", "port": port}
    if https:
        get["scheme"] = "HTTPS"
    return {
        "httpGet": get,
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failure_threshold,
    }


def _env(spec: ContainerSpec) -> list[dict[str, Any]]:
    return [{"name": key, "value": value} for key, value in sorted(spec.environment.items())]


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _weights_gib(profile: Profile, catalog: Catalog) -> int | None:
    spec = profile.spec
    total = 0
    known = catalog.model_by_repo(spec.model.repo)
    if known is None:
        return None
    total += known[1].weight_bytes
    if spec.embeddings_enabled and spec.embeddings is not None and spec.embeddings.repo:
        embedding = catalog.embedding(spec.embeddings.repo)
        if embedding is None:
            return None
        total += embedding.weight_bytes
    # Tokenizer and config files, LoRA adapters and a second revision during an upgrade: room.
    return max(20, math.ceil(total * 1.5 / _GIB) + 10)


def _refuse_switching(profile: Profile) -> None:
    """Several chat models (spec.switching) take turns sleeping on one box, which apply
    orchestrates; a Kubernetes export would silently serve one of them."""
    if profile.spec.switching is not None:
        raise BadInputError(
            "Kubernetes exports do not run several chat models (spec.switching): their engines "
            "take turns sleeping on one box, which `appliance apply` orchestrates",
            hint="export a profile without spec.switching (one per model)",
        )


def _by_role(specs: Sequence[ContainerSpec], role: str) -> ContainerSpec | None:
    return next((spec for spec in specs if spec.role == role), None)


def _gpu_product(box: Box) -> str | None:
    """The `nvidia.com/gpu.product` label GPU feature discovery puts on nodes with this GPU."""
    if not box.gpus or not box.gpus[0].name:
        return None
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", box.gpus[0].name).strip("-")


def _prefer_gpu(box: Box) -> dict[str, Any] | None:
    product = _gpu_product(box)
    if product is None:
        return None
    term = {"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}
    return {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [term]}}
            ]
        }
    }


# ------------------------------------------------------------------------------ objects


def _models_pvc(profile: Profile, catalog: Catalog, options: K8sOptions) -> dict[str, Any]:
    size = options.models_storage_gib or _weights_gib(profile, catalog) or 200
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": f"{size}Gi"}},
    }
    if options.storage_class:
        spec["storageClassName"] = options.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(profile, "models", _name(profile, "models"), options),
        "spec": spec,
    }


_DOWNLOAD_SCRIPT: Final = """\
import sys
from huggingface_hub import snapshot_download
for repo, revision, target in zip(*[iter(sys.argv[1:])] * 3):
    print(f"downloading {repo}@{revision} to {target}", flush=True)
    snapshot_download(repo, revision=revision, local_dir=target,
                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                      "*.tiktoken", "*.jinja", "1_Pooling/*"])
"""


def _weights_job(profile: Profile, vllm_image: str, options: K8sOptions) -> dict[str, Any]:
    """A Job that fills the weights volume in the layout the engines read, once."""
    spec = profile.spec
    repos = [(spec.model.repo, spec.model.revision)]
    repos += [(adapter.repo, adapter.revision) for adapter in spec.model.lora_adapters]
    if spec.embeddings_enabled and spec.embeddings is not None and spec.embeddings.repo:
        repos.append((spec.embeddings.repo, spec.embeddings.revision))
    argv: list[str] = []
    for repo, revision in repos:
        argv += [repo, revision, str(weights_path(CONTAINER_MODELS_DIR, repo, revision))]
    container = {
        "name": "download",
        "image": vllm_image,  # it ships huggingface_hub; no other image to pull
        "command": ["python3", "-c", _DOWNLOAD_SCRIPT, *argv],
        "env": [
            # Gated repos need a token; it comes from a Secret the operator creates, if any.
            _secret_env("HF_TOKEN", _name(profile, "hf-token"), "token", optional=True),
            {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        ],
        "volumeMounts": [{"name": "models", "mountPath": str(CONTAINER_MODELS_DIR)}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(profile, "weights", _name(profile, "weights"), options),
        "spec": {
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": _labels(profile, "weights")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {"claimName": _name(profile, "models")},
                        }
                    ],
                },
            },
        },
    }


def _engine_deployment(
    profile: Profile,
    spec: ContainerSpec,
    *,
    port: int,
    gpus: int,
    replicas: int,
    startup_failures: int,
    box: Box,
    options: K8sOptions,
    shm_gib: int | None,
) -> dict[str, Any]:
    role = spec.role
    container: dict[str, Any] = {
        "name": role,
        "image": spec.image,
        # the image's entrypoint stays (vllm serve, TEI's router) unless the spec replaces it
        "args": list(spec.command),
        **({"command": list(spec.entrypoint)} if spec.entrypoint is not None else {}),
        "env": _env(spec),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "startupProbe": _http_probe("http", period_s=10, failure_threshold=startup_failures),
        "readinessProbe": _http_probe("http", period_s=10, failure_threshold=3),
        "livenessProbe": _http_probe("http", period_s=20, failure_threshold=3),
        "volumeMounts": [
            {"name": "models", "mountPath": str(CONTAINER_MODELS_DIR), "readOnly": True}
        ],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    volumes: list[dict[str, Any]] = [
        {
            "name": "models",
            "persistentVolumeClaim": {"claimName": _name(profile, "models"), "readOnly": True},
        }
    ]
    if shm_gib:
        shm_mount = {"name": "shm", "mountPath": "/dev/shm"}  # noqa: S108 - the pod's own tmpfs
        container["volumeMounts"].append(shm_mount)
        volumes.append(
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib}Gi"}}
        )
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 60,
    }
    affinity = _prefer_gpu(box) if gpus else None
    if affinity is not None:
        pod_spec["affinity"] = affinity
    if gpus:
        pod_spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(profile, role, _name(profile, role), options),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(profile, role)},
            # A GPU pod cannot start beside the one it replaces on a full node: replace in place.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {
                "metadata": {
                    "labels": _labels(profile, role),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _service(
    profile: Profile, role: str, port: int, target_port: int, options: K8sOptions
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(profile, role, _name(profile, role), options),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(profile, role),
            "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
        },
    }


def _pdb(profile: Profile, options: K8sOptions) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(profile, "vllm", _name(profile, "vllm"), options),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector(profile, "vllm")}},
    }


def _scaled_object(profile: Profile, options: K8sOptions) -> dict[str, Any]:
    threshold = options.queue_threshold or profile.spec.gateway.fallback.queue_threshold
    served = profile.spec.model.served_name
    # The engine's queue gauge: vLLM's, or SGLang's (sglang 0.5.21
    # srt/observability/metrics_collector.py, labelled model_name like vLLM's).
    sglang = profile.spec.engine.kind == "sglang"
    waiting = "sglang:num_queue_reqs" if sglang else "vllm:num_requests_waiting"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(profile, "vllm", _name(profile, "vllm"), options),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": _name(profile, "vllm"),
            },
            **_keda_replicas(options),
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": _SCALE_DOWN_COOLDOWN_S,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        }
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    # Per replica: scale out when each has more than `threshold` waiting.
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": options.prometheus_address,
                        "query": f'sum({waiting}{{model_name="{served}"}})',
                        "threshold": str(threshold),
                    },
                }
            ],
        },
    }


def gateway_args(profile: Profile, options: K8sOptions) -> list[str]:
    """The gateway container's arguments on a cluster: the profile, with upstreams as Services.

    On the box the gateway reaches the engines on 127.0.0.1; here it reaches their Services, so
    the upstreams are given explicitly (`appliance gateway PROFILE --chat-upstream URL
    [--embeddings-upstream URL] --host 0.0.0.0 --port 8080`).
    """
    args = [
        "gateway",
        str(_PROFILE_MOUNT / "profile.yaml"),
        "--chat-upstream",
        f"http://{_name(profile, 'vllm')}.{options.namespace}.svc:{VLLM_CONTAINER_PORT}/v1",
    ]
    if profile.spec.embeddings_enabled:
        args += [
            "--embeddings-upstream",
            f"http://{_name(profile, 'tei')}.{options.namespace}.svc:{TEI_CONTAINER_PORT}/v1",
        ]
    return [*args, "--host", "0.0.0.0", "--port", str(GATEWAY_CONTAINER_PORT)]  # noqa: S104


def _gateway_objects(profile: Profile, options: K8sOptions) -> list[dict[str, Any]]:
    spec = profile.spec
    state_dir = str(spec.storage.state_dir)
    env: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = [
        {"name": "profile", "mountPath": str(_PROFILE_MOUNT), "readOnly": True},
        {"name": "state", "mountPath": state_dir},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "profile", "configMap": {"name": _name(profile, "profile")}},
        {"name": "state", "persistentVolumeClaim": {"claimName": _name(profile, "gateway-state")}},
    ]
    remote = spec.gateway.fallback.remote
    if remote is not None and remote.api_key_env is not None:
        env.append(_secret_env(remote.api_key_env, _name(profile, "remote-api"), "api-key"))
    elif remote is not None and remote.api_key_file is not None:
        volumes.append(
            {
                "name": "remote-api-key",
                "secret": {"secretName": _name(profile, "remote-api"), "defaultMode": 0o400},
            }
        )
        mounts.append(
            {
                "name": "remote-api-key",
                "mountPath": str(remote.api_key_file),
                "subPath": "api-key",
                "readOnly": True,
            }
        )
    if spec.gateway.admin_key_env is not None:
        env.append(
            _secret_env(spec.gateway.admin_key_env, _name(profile, "gateway-admin"), "admin-key")
        )
    tls = spec.gateway.tls
    if tls is not None:
        # The profile (in the ConfigMap) names these paths; the files come from a TLS Secret
        # (`kubectl create secret tls`, keys tls.crt and tls.key), mounted where it says.
        volumes.append(
            {
                "name": "gateway-tls",
                "secret": {"secretName": _name(profile, "gateway-tls"), "defaultMode": 0o400},
            }
        )
        for path, key in ((tls.cert_file, "tls.crt"), (tls.key_file, "tls.key")):
            mounts.append(
                {"name": "gateway-tls", "mountPath": str(path), "subPath": key, "readOnly": True}
            )
    https = tls is not None
    scrape = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(GATEWAY_CONTAINER_PORT),
        "prometheus.io/path": "/metrics",
    }
    if https:
        # Read by the pod-annotation job of Prometheus's example Kubernetes config; that
        # job's tls_config must trust the Secret's tls.crt (see the README).
        scrape["prometheus.io/scheme"] = "https"
    container: dict[str, Any] = {
        "name": "gateway",
        "image": options.gateway_image,
        "command": ["appliance"],
        "args": gateway_args(profile, options),
        "env": env,
        "ports": [{"name": "http", "containerPort": GATEWAY_CONTAINER_PORT, "protocol": "TCP"}],
        "readinessProbe": _http_probe(
            "http", period_s=5, failure_threshold=3, timeout_s=2, https=https
        ),
        "livenessProbe": _http_probe(
            "http", period_s=10, failure_threshold=3, timeout_s=2, https=https
        ),
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    if not env:
        del container["env"]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(profile, "gateway", _name(profile, "profile"), options),
            "data": {"profile.yaml": dump_profile(profile)},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(profile, "gateway", _name(profile, "gateway-state"), options),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                **({"storageClassName": options.storage_class} if options.storage_class else {}),
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(profile, "gateway", _name(profile, "gateway"), options),
            "spec": {
                "replicas": options.gateway_replicas,
                "selector": {"matchLabels": _selector(profile, "gateway")},
                "strategy": {"type": "Recreate"},  # one writer of the state volume at a time
                "template": {
                    "metadata": {
                        "labels": _labels(profile, "gateway"),
                        "annotations": scrape,
                    },
                    "spec": {
                        "securityContext": {"runAsUser": 10001, "fsGroup": 10001},
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            },
        },
        _service(profile, "gateway", 8080, GATEWAY_CONTAINER_PORT, options),
    ]


def manifests(
    profile: Profile,
    box: Box,
    *,
    options: K8sOptions | None = None,
    catalog: Catalog | None = None,
) -> list[dict[str, Any]]:
    """Every object of the `manifests` format, in apply order."""
    _refuse_switching(profile)
    options = options or K8sOptions()
    catalog = catalog or load_catalog()
    specs = container_specs(profile, box, catalog=catalog, options=SpecOptions(gpu_requests=False))
    vllm = _by_role(specs, "vllm")
    assert vllm is not None  # container_specs always gives vLLM first
    tp = profile.spec.engine.tensor_parallel_size
    on_cpu = profile.spec.engine.device == "cpu"  # vLLM's CPU image: no GPU to ask for
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": options.namespace, "labels": _labels(profile, "namespace")},
        },
        _models_pvc(profile, catalog, options),
        _weights_job(profile, vllm.image, options),
        _engine_deployment(
            profile,
            vllm,
            port=engine_container_port(profile),
            gpus=0 if on_cpu else tp,
            replicas=max(options.min_replicas, 1),
            startup_failures=_VLLM_STARTUP_BUDGET_S // 10,
            box=box,
            options=options,
            shm_gib=max(2, 2 * tp),
        ),
        _service(profile, "vllm", VLLM_CONTAINER_PORT, engine_container_port(profile), options),
        _pdb(profile, options),
        _scaled_object(profile, options),
    ]
    tei = _by_role(specs, "tei")
    embeddings = profile.spec.embeddings
    if tei is not None and embeddings is not None:
        objects += [
            _engine_deployment(
                profile,
                tei,
                port=TEI_CONTAINER_PORT,
                # On a cluster TEI gets a GPU of its own: pods do not share one without
                # time-slicing or MIG configured in the device plugin.
                gpus=1 if embeddings.device == "gpu" else 0,
                replicas=1,
                startup_failures=60,
                box=box,
                options=options,
                shm_gib=None,
            ),
            _service(profile, "tei", TEI_CONTAINER_PORT, TEI_CONTAINER_PORT, options),
        ]
    objects += _gateway_objects(profile, options)
    return objects


# ------------------------------------------------------------------------------ production-stack

# Flags production-stack's chart (helm/templates/deployment-vllm-multi.yaml) writes itself from
# `vllmConfig` or the model spec; everything else `vllm_command` gives goes to `extraArgs`.
_CHART_SETS: Final = {
    "--model": 1,
    "--host": 1,
    "--port": 1,
    "--enable-prefix-caching": 0,
    "--no-enable-prefix-caching": 0,
    "--max-model-len": 1,
    "--tensor-parallel-size": 1,
    "--max-num-seqs": 1,
    "--gpu-memory-utilization": 1,
    "--dtype": 1,
    "--max-loras": 1,
    "--enable-lora": 0,
}


def _extra_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(flags for `extraArgs`, LoRA flags dropped) from a vLLM command line."""
    extra: list[str] = []
    dropped: list[str] = []
    index = 0
    while index < len(argv):
        flag = argv[index]
        if flag in _CHART_SETS:
            index += 1 + _CHART_SETS[flag]
            continue
        if flag == "--lora-modules":  # paths under /models: the chart serves adapters its own way
            index += 1
            while index < len(argv) and not argv[index].startswith("-"):
                dropped.append(argv[index])
                index += 1
            continue
        extra.append(flag)
        index += 1
    return extra, dropped


def _model_spec_name(profile: Profile) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", profile.spec.model.served_name.lower()).strip("-")
    return name[:40].strip("-") or profile.metadata.name


def production_stack_values(
    profile: Profile,
    box: Box,
    *,
    options: K8sOptions | None = None,
    catalog: Catalog | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Values for vLLM's production-stack chart, and notes on what the chart does not cover.

    Key names follow the chart's `helm/values.schema.json` (checked at production-stack commit
    a6c01db0, August 2026). `keda.triggers` is left to the chart's default (a Prometheus trigger
    on `vllm:num_requests_waiting`): its schema types `triggers` as one object while KEDA needs a
    list, so any value written here would fail either `helm install`'s schema check or KEDA.
    """
    options = options or K8sOptions()
    _refuse_switching(profile)
    catalog = catalog or load_catalog()
    spec = profile.spec
    engine = spec.engine
    if engine.kind != "vllm":
        raise BadInputError(
            f"production-stack's chart deploys vLLM only; this profile's engine.kind is "
            f"{engine.kind}",
            hint="export it with --format manifests (the default), which runs any engine kind",
        )
    specs = container_specs(profile, box, catalog=catalog, options=SpecOptions(gpu_requests=False))
    vllm = _by_role(specs, "vllm")
    assert vllm is not None
    repository, _, tag = vllm.image.rpartition(":")
    argv = vllm_command(profile, box)
    extra, dropped = _extra_args(argv)
    vllm_config: dict[str, Any] = {
        "enablePrefixCaching": engine.enable_prefix_caching,
        "tensorParallelSize": engine.tensor_parallel_size,
        "gpuMemoryUtilization": engine.gpu_memory_utilization,
    }
    if engine.max_model_len is not None:
        vllm_config["maxModelLen"] = engine.max_model_len
    if engine.max_num_seqs is not None:
        vllm_config["maxNumSeqs"] = engine.max_num_seqs
    if spec.model.quantization in ("bf16", "fp16"):
        vllm_config["dtype"] = "bfloat16" if spec.model.quantization == "bf16" else "float16"
    if extra:
        vllm_config["extraArgs"] = extra
    size = options.models_storage_gib or _weights_gib(profile, catalog) or 200
    model_spec: dict[str, Any] = {
        "name": _model_spec_name(profile),
        "repository": repository,
        "tag": tag,
        "modelURL": spec.model.repo,
        "replicaCount": max(options.min_replicas, 1),
        "requestCPU": 4,
        "requestMemory": "32Gi",
        "requestGPU": engine.tensor_parallel_size,
        "pvcStorage": f"{size}Gi",
        "pvcAccessMode": ["ReadWriteOnce"],
        "shmSize": f"{max(2, 2 * engine.tensor_parallel_size)}Gi",
        "vllmConfig": vllm_config,
        "hf_token": {"secretName": _name(profile, "hf-token"), "secretKey": "token"},
        "keda": {
            "enabled": True,
            **_keda_replicas(options),
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": _SCALE_DOWN_COOLDOWN_S}
                    }
                }
            },
        },
    }
    if spec.model.revision != "main":
        model_spec["modelRevision"] = spec.model.revision
    if options.storage_class:
        model_spec["storageClass"] = options.storage_class
    values: dict[str, Any] = {
        "servingEngineSpec": {
            "enableEngine": True,
            "modelSpec": [model_spec],
            # The chart's default KEDA trigger selects `vllm:num_requests_waiting{model="…"}`;
            # vLLM labels its series `model_name`, so the Service's `model` label is copied onto
            # the scraped series (needs the Prometheus operator, as the ServiceMonitor does).
            "serviceMonitor": {
                "enabled": True,
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_service_label_model"],
                        "targetLabel": "model",
                    }
                ],
            },
        },
        "routerSpec": {
            "enableRouter": True,
            "routingLogic": "prefixaware" if engine.enable_prefix_caching else "roundrobin",
        },
    }
    notes = [
        "the chart downloads the weights itself from modelURL into its PVC; create the "
        f"Secret {_name(profile, 'hf-token')} (key: token) if the repo is gated",
        "the chart's KEDA trigger is its default one (vllm:num_requests_waiting per model, "
        "threshold 5, through the Prometheus operator's ServiceMonitor this enables)",
    ]
    if dropped:
        notes.append(
            "LoRA adapters are not carried over (" + ", ".join(dropped) + "); production-stack "
            "loads adapters through its LoraAdapter resources"
        )
    if spec.embeddings_enabled:
        notes.append(
            "production-stack serves no TEI: deploy the embeddings with the `manifests` format "
            "(the TEI Deployment and Service) beside it"
        )
    if spec.gateway.fallback.mode != "off":
        notes.append(
            "production-stack's router has no API fallback: keep the appliance gateway in front "
            "(see the `manifests` format) to overflow to the remote API"
        )
    return values, notes


# ------------------------------------------------------------------------------ writing


def box_for_export(profile: Profile, simulate: str | None = None) -> Box:
    """The kind of node vLLM runs on: `simulate` (`h100`, `2x4090`, …), or the GPU the profile
    in profiles/ was written for. Nothing on this machine is probed: the cluster is elsewhere."""
    from appliance.hardware import detect_box
    from appliance.runtime.compose import EXAMPLE_BOXES

    name = simulate or EXAMPLE_BOXES.get(profile.metadata.name)
    if name is None:
        raise BadInputError(
            f"which GPU do the cluster's nodes have for profile {profile.metadata.name}?",
            hint="give it with --simulate, e.g. --simulate h100 or --simulate 2x4090",
        )
    return detect_box(simulate=name, models_dir=profile.spec.storage.models_dir)


def _image_comment(profile: Profile, box: Box, catalog: Catalog | None) -> str:
    """Why the vLLM image is the build it is: the nodes' driver decides (as on a box)."""
    choice = engine_image_choice(profile, box, catalog)
    engine = "SGLang" if profile.spec.engine.kind == "sglang" else "vLLM"
    if choice is None:
        pinned = profile.spec.images.sglang or profile.spec.images.vllm
        return f"# {engine} image: {pinned}, pinned by the profile.\n"
    lines = [
        f"# {engine} image: {choice.image} (CUDA {choice.cuda}) for the nodes' NVIDIA driver:",
        f"# {choice.why}.",
        "# Nodes on another driver may need the other build: export again with --simulate set",
        "# to a file `appliance detect --json` wrote on one of them.",
    ]
    return "\n".join(lines) + "\n"


def _yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)


def _readme(profile: Profile, options: K8sOptions, fmt: K8sFormat, notes: Sequence[str]) -> str:
    name, ns = profile.metadata.name, options.namespace
    lines = [
        f"# {name} on Kubernetes ({fmt})",
        "",
        f"Generated by `appliance export k8s` (llm-appliance {__version__}). Edit the profile and",
        "export again rather than editing these files.",
        "",
        "Needs: the NVIDIA device plugin (nvidia.com/gpu), a storage class with ReadWriteMany for",
        "the weights, and for autoscaling KEDA plus a Prometheus that scrapes vLLM.",
        "",
        "Secrets are referenced, never written. Create the ones this profile needs:",
        "",
        "```sh",
        f"kubectl -n {ns} create secret generic {name}-hf-token --from-literal=token=hf_…"
        "   # gated repos only",
    ]
    remote = profile.spec.gateway.fallback.remote
    if remote is not None:
        lines.append(
            f"kubectl -n {ns} create secret generic {name}-remote-api --from-literal=api-key=…"
        )
    if profile.spec.gateway.admin_key_env is not None:
        lines.append(
            f"kubectl -n {ns} create secret generic {name}-gateway-admin --from-literal=admin-key=…"
        )
    # Only the manifests run the gateway; production-stack's chart serves vLLM alone.
    tls = profile.spec.gateway.tls if fmt == "manifests" else None
    if tls is not None:
        lines.append(
            f"kubectl -n {ns} create secret tls {name}-gateway-tls "
            f"--cert={tls.cert_file} --key={tls.key_file}"
        )
    lines.append("```")
    if tls is not None:
        lines += [
            "",
            "The gateway serves HTTPS with that certificate (mounted where the profile names it);",
            "a Prometheus scraping it by its pod annotations (`prometheus.io/scheme: https`)",
            "must trust it: give that job `tls_config: {ca_file: …}` with the certificate.",
        ]
    lines.append("")
    if fmt == "manifests":
        lines += [
            f"Then `kubectl apply -f .`; the Job `{name}-weights` fills the weights volume, and",
            "vLLM becomes ready once it has.",
            "",
            f"The gateway runs the image `{options.gateway_image}`. Build it from the appliance's",
            "checkout with its `Containerfile` (non-root, pinned Python base), push it to a",
            "registry the cluster pulls from, and name it in the gateway's Deployment",
            f"(`image:` in `*-deployment-{_name(profile, 'gateway')}.yaml`) before applying:",
            "",
            "```sh",
            "pip wheel . -w dist        # the appliance and its pinned dependencies, as wheels",
            f"docker build -f Containerfile -t REGISTRY/{options.gateway_image} .",
            f"docker push REGISTRY/{options.gateway_image}",
            "```",
        ]
    else:
        lines += [
            "Then `helm repo add vllm https://vllm-project.github.io/production-stack` and",
            f"`helm install {name} vllm/vllm-stack -n {ns} -f values.yaml`.",
        ]
    if notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def k8s_export(
    profile: Profile,
    box: Box,
    output_dir: Path,
    *,
    fmt: K8sFormat = "manifests",
    options: K8sOptions | None = None,
    catalog: Catalog | None = None,
) -> list[Path]:
    """`appliance export k8s PROFILE -o DIR [--format manifests|production-stack]`.

    Writes one YAML file per object (numbered in apply order) or `values.yaml`, plus a README
    with the `kubectl create secret` lines; returns the paths written. `box` is the kind of node
    the cluster runs vLLM on (a simulated box: `--simulate h100`), which decides quantization
    kernels and the preferred GPU product.
    """
    options = options or K8sOptions()
    files: dict[str, str] = {}
    notes: list[str] = []
    image_comment = _image_comment(profile, box, catalog)
    if fmt == "manifests":
        for index, document in enumerate(manifests(profile, box, options=options, catalog=catalog)):
            kind = document["kind"].lower()
            text = _yaml(document)
            if kind == "deployment" and document["metadata"]["name"] == _name(profile, "vllm"):
                text = image_comment + text
            files[f"{index:02d}-{kind}-{document['metadata']['name']}.yaml"] = text
    elif fmt == "production-stack":
        values, notes = production_stack_values(profile, box, options=options, catalog=catalog)
        header = (
            f"# Helm values for vLLM's production-stack chart (vllm/vllm-stack), profile "
            f"{profile.metadata.name}; generated by `appliance export k8s --format "
            "production-stack`.\n" + image_comment
        )
        files["values.yaml"] = header + _yaml(values)
    else:
        raise BadInputError(
            f"unknown format {fmt!r}", hint="use --format manifests or --format production-stack"
        )
    files["README.md"] = _readme(profile, options, fmt, notes)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for filename, text in files.items():
            path = output_dir / filename
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise BadInputError(f"cannot write to {output_dir}: {exc.strerror or exc}") from None
    return written
