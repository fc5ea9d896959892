"""Kubernetes export: every ready-made profile gives manifests that validate offline.

Core objects are validated against Kubernetes' own OpenAPI schemas, strictly (unknown fields are
errors), with the `kubernetes-validate` package, which ships them. The KEDA ScaledObject is a
custom resource those schemas do not cover: it is checked against KEDA's own CRD
(`config/crd/bases/keda.sh_scaledobjects.yaml` at v2.20.2, vendored in tests/fixtures, made
strict), and against the stricter rules written out below (enums and bounds the CRD only states
in prose).
production-stack values are checked against the key names of the chart's `values.schema.json`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from appliance.errors import BadInputError
from appliance.exports.k8s import (
    K8sOptions,
    box_for_export,
    k8s_export,
    manifests,
    production_stack_values,
)
from appliance.hardware.box import Box
from appliance.profile import Profile, load_profile
from appliance.runtime.specs import vllm_command
from tests.support.tls import CERT_FILE, KEY_FILE, with_gateway_tls

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "profiles").glob("*.yaml"))
VLLM_SCRAPE = ROOT / "tests" / "fixtures" / "vllm-0.32-cpu-metrics.txt"
KUBERNETES_VERSION = "1.33.0"

API_VERSIONS = {
    "Namespace": "v1",
    "PersistentVolumeClaim": "v1",
    "Job": "batch/v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "ConfigMap": "v1",
}

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# The fields of KEDA's ScaledObject CRD (keda.sh/v1alpha1) that matter here, as its
# openAPIV3Schema has them: required fields, types, trigger metadata as string values only,
# metricType at the trigger's level, and the HPA's stabilization window bounds.
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "initialCooldownPeriod": _INT32,
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "scaleUp": {"$ref": "#/$defs/rules"},
                                        "scaleDown": {"$ref": "#/$defs/rules"},
                                    },
                                },
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["metadata", "type"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
    "$defs": {
        "rules": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
                "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
                "policies": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "value", "periodSeconds"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["Pods", "Percent"]},
                            "value": {"type": "integer", "minimum": 1},
                            "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                        },
                    },
                },
            },
        }
    },
}

# production-stack (vllm-project/production-stack, helm/values.schema.json at a6c01db0, Aug 2026):
# the keys it allows where the export writes.
CHART_TOP = {
    "cacheserverSpec", "extraObjects", "grafanaDashboards", "kube-prometheus-stack",
    "loraAdapters", "loraController", "prometheus-adapter", "routerSpec", "servingEngineSpec",
    "sharedPvcStorage",
}  # fmt: skip
CHART_ENGINE = {
    "configs", "containerPort", "containerSecurityContext", "enableEngine", "extraPorts",
    "imagePullPolicy", "labels", "livenessProbe", "modelSpec", "readinessProbe",
    "runtimeClassName", "schedulerName", "securityContext", "serviceMonitor", "servicePort",
    "sidecar", "startupProbe", "strategy", "tolerations", "vllmApiKey",
}  # fmt: skip
CHART_MODEL = {
    "affinity", "annotations", "enableLoRA", "enabled", "env", "envFromSecret",
    "extraVolumeMounts", "extraVolumes", "hf_token", "imagePullSecret", "initContainer", "keda",
    "labels", "limitCPU", "limitGPUCores", "limitGPUMem", "limitGPUMemPercentage", "limitMemory",
    "lmcacheConfig", "modelRevision", "modelURL", "name", "nodeName", "nodeSelectorTerms",
    "podAnnotations", "podLabels", "priorityClassName", "pvcAccessMode", "pvcAnnotations",
    "pvcLabels", "pvcMatchLabels", "pvcStorage", "raySpec", "replicaCount", "repository",
    "requestCPU", "requestGPU", "requestGPUCores", "requestGPUMem", "requestGPUMemPercentage",
    "requestGPUType", "requestMemory", "resources", "runtimeClassName", "serviceAccountName",
    "serviceAnnotations", "shmSize", "storageClass", "tag", "tolerations", "tolerationsPolicy",
    "vllmConfig",
}  # fmt: skip
CHART_VLLM_CONFIG = {
    "convert", "dtype", "enableChunkedPrefill", "enablePrefixCaching", "extraArgs",
    "gpuMemoryUtilization", "maxLoras", "maxModelLen", "maxNumSeqs", "runner",
    "tensorParallelSize", "v0",
}  # fmt: skip
CHART_KEDA = {
    "advanced", "cooldownPeriod", "enabled", "fallback", "idleReplicaCount",
    "initialCooldownPeriod", "maxReplicaCount", "minReplicaCount", "pollingInterval", "triggers",
}  # fmt: skip
CHART_ROUTER_LOGIC = {
    "roundrobin", "session", "prefixaware", "kvaware", "disaggregated_prefill",
    "disaggregated_prefill_orchestrated",
}  # fmt: skip
# Flags the chart's deployment template writes itself: extraArgs must not repeat them.
CHART_FLAGS = {
    "--host", "--port", "--enable-prefix-caching", "--no-enable-prefix-caching",
    "--max-model-len", "--dtype", "--tensor-parallel-size", "--max-num-seqs",
    "--gpu-memory-utilization", "--gpu_memory_utilization", "--max_loras", "--enable-lora",
}  # fmt: skip


@pytest.fixture(scope="module", params=PROFILES, ids=lambda p: p.stem)
def exported(request: pytest.FixtureRequest) -> tuple[Profile, Box, list[dict[str, Any]]]:
    profile = load_profile(request.param)
    box = box_for_export(profile)
    documents = manifests(profile, box)
    # What is written is YAML; read it back so the checks see what kubectl would.
    return profile, box, [yaml.safe_load(yaml.safe_dump(d)) for d in documents]


def _of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def _one(documents: list[dict[str, Any]], kind: str, role: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in _of_kind(documents, kind)
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == role
    ]
    return found


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_kinds_and_api_versions(exported: tuple[Profile, Box, list[dict[str, Any]]]) -> None:
    profile, _, documents = exported
    kinds = [d["kind"] for d in documents]
    for kind in ("PersistentVolumeClaim", "Job", "Deployment", "Service", "PodDisruptionBudget"):
        assert kind in kinds
    assert kinds.count("ScaledObject") == 1
    expected = 3 if profile.spec.embeddings_enabled else 2  # vLLM, TEI, gateway
    assert kinds.count("Deployment") == expected
    assert kinds.count("Service") == expected
    for document in documents:
        assert document["apiVersion"] == API_VERSIONS[document["kind"]]
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "llm-appliance"


def test_core_objects_validate_against_kubernetes_schemas(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    _, _, documents = exported
    for document in documents:
        if document["kind"] == "ScaledObject":
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_scaled_object_validates_against_kedas_crd_fields(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    _, _, documents = exported
    (scaled,) = _of_kind(documents, "ScaledObject")
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as the API server applies it to a create, made strict: objects
    that declare their properties and do not preserve unknown fields reject any other key (the
    server would silently prune it, so a typo would vanish without a word)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def test_scaled_object_validates_against_kedas_own_crd(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    # tests/fixtures/keda-scaledobjects-crd.yaml: config/crd/bases/keda.sh_scaledobjects.yaml of
    # kedacore/keda at tag v2.20.2, unchanged.
    crd = yaml.safe_load((FIXTURES / "keda-scaledobjects-crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    _, _, documents = exported
    (scaled,) = _of_kind(documents, "ScaledObject")
    assert scaled["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    assert scaled["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(scaled, schema)
    typo = {**scaled, "spec": {**scaled["spec"], "cooldownPeriods": 300}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


def test_keda_scales_vllm_on_a_real_vllm_metric_with_a_five_minute_cooldown(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    profile, _, documents = exported
    (scaled,) = _of_kind(documents, "ScaledObject")
    spec = scaled["spec"]
    vllm = _one(documents, "Deployment", "vllm")
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": vllm["metadata"]["name"],
    }
    assert spec["cooldownPeriod"] == 300
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    match = re.fullmatch(r'sum\(([a-z_:]+)\{model_name="([^"]+)"\}\)', query)
    assert match is not None, query
    scrape = VLLM_SCRAPE.read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(match.group(1))}\{{[^}}]*model_name=", scrape, re.M)
    assert match.group(1) == "vllm:num_requests_waiting"
    assert match.group(2) == profile.spec.model.served_name
    assert int(trigger["metadata"]["threshold"]) == profile.spec.gateway.fallback.queue_threshold
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_vllm_deployment_reuses_the_runtime_command_and_asks_for_gpus(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    profile, box, documents = exported
    deployment = _one(documents, "Deployment", "vllm")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == list(vllm_command(profile, box))
    assert "command" not in container  # the image's entrypoint (vllm serve) stays
    tp = profile.spec.engine.tensor_parallel_size
    assert container["resources"]["limits"]["nvidia.com/gpu"] == tp
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # a slow 70B load must not be killed: the startup budget is half an hour
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    claims = {v["name"]: v for v in pod["volumes"]}
    assert (
        claims["models"]["persistentVolumeClaim"]["claimName"] == f"{profile.metadata.name}-models"
    )
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert mounts["shm"]["mountPath"] == "/dev/shm"


def test_services_and_pdb_select_the_pods(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    _, _, documents = exported
    for deployment in _of_kind(documents, "Deployment"):
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        service = _one(documents, "Service", role)
        assert service["spec"]["selector"].items() <= pod_labels.items()
        port = service["spec"]["ports"][0]["targetPort"]
        container_ports = [
            p["containerPort"]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        ]
        assert port in container_ports
    pdb = _one(documents, "PodDisruptionBudget", "vllm")
    assert pdb["spec"]["minAvailable"] == 1
    vllm = _one(documents, "Deployment", "vllm")
    assert pdb["spec"]["selector"]["matchLabels"] == vllm["spec"]["selector"]["matchLabels"]
    assert vllm["spec"]["replicas"] >= 2  # a PDB of minAvailable 1 needs a second replica


def test_weights_pvc_is_shared_and_filled_by_a_job(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    profile, _, documents = exported
    pvc = _one(documents, "PersistentVolumeClaim", "models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    size = int(pvc["spec"]["resources"]["requests"]["storage"].removesuffix("Gi"))
    assert size >= 20
    job = _one(documents, "Job", "weights")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert profile.spec.model.repo in container["command"]


def test_no_secret_value_is_written(
    exported: tuple[Profile, Box, list[dict[str, Any]]],
) -> None:
    profile, _, documents = exported
    assert not _of_kind(documents, "Secret")
    text = yaml.safe_dump_all(documents)
    assert not re.search(r"\b(sk-[A-Za-z0-9]{8,}|hf_[A-Za-z0-9]{8,})", text)
    for node in _walk(documents):
        if isinstance(node, dict) and "name" in node and ("value" in node or "valueFrom" in node):
            secretish = re.search(r"KEY|TOKEN|SECRET|PASSWORD", node["name"], re.I)
            if secretish:
                assert "value" not in node, f"{node['name']} is written as a literal"
                assert "secretKeyRef" in node["valueFrom"]
    remote = profile.spec.gateway.fallback.remote
    if remote is not None and remote.api_key_env is not None:
        gateway = _one(documents, "Deployment", "gateway")
        env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": remote.api_key_env, "valueFrom": {"secretKeyRef": {
            "name": f"{profile.metadata.name}-remote-api", "key": "api-key"}}} in env  # fmt: skip


def test_tei_and_gateway(exported: tuple[Profile, Box, list[dict[str, Any]]]) -> None:
    profile, _, documents = exported
    if profile.spec.embeddings_enabled:
        tei = _one(documents, "Deployment", "tei")
        (container,) = tei["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        embeddings = profile.spec.embeddings
        assert embeddings is not None
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)
        assert gpus == (1 if embeddings.device == "gpu" else 0)
    gateway = _one(documents, "Deployment", "gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["securityContext"]["runAsNonRoot"] is True
    args = container["args"]
    assert args[args.index("--chat-upstream") + 1].startswith(
        f"http://{profile.metadata.name}-vllm.llm-appliance.svc:8000"
    )
    config_map = _one(documents, "ConfigMap", "gateway")
    assert load_profile_text(config_map["data"]["profile.yaml"]) == profile


def load_profile_text(text: str) -> Profile:
    from appliance.profile import parse_profile

    return parse_profile(text, "configmap")


def test_export_writes_numbered_files_and_a_readme(tmp_path: Path) -> None:
    profile = load_profile(ROOT / "profiles" / "l40s-rag.yaml")
    written = k8s_export(profile, box_for_export(profile), tmp_path / "out")
    names = [path.name for path in written]
    assert names[-1] == "README.md"
    assert names[0].startswith("00-namespace-")
    for path in written[:-1]:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["kind"].lower() in path.name
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "kubectl -n llm-appliance create secret generic l40s-rag-remote-api" in readme


def test_options_are_checked() -> None:
    with pytest.raises(BadInputError, match="namespace"):
        K8sOptions(namespace="Not_A_Namespace")
    with pytest.raises(BadInputError, match="replicas"):
        K8sOptions(min_replicas=5, max_replicas=2)
    profile = load_profile(ROOT / "profiles" / "l40s-rag.yaml")
    renamed = profile.model_copy(update={"metadata": profile.metadata.model_copy(
        update={"name": "custom-box"})})  # fmt: skip
    with pytest.raises(BadInputError, match="which GPU"):
        box_for_export(renamed)
    with pytest.raises(BadInputError, match="unknown format"):
        k8s_export(profile, box_for_export(profile), Path("/nonexistent"), fmt="helm")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- production-stack


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_production_stack_values_use_the_charts_keys(path: Path, tmp_path: Path) -> None:
    profile = load_profile(path)
    box = box_for_export(profile)
    values, notes = production_stack_values(profile, box)
    written = k8s_export(profile, box, tmp_path, fmt="production-stack")
    assert [p.name for p in written] == ["values.yaml", "README.md"]
    assert yaml.safe_load(written[0].read_text(encoding="utf-8")) == values

    assert set(values) <= CHART_TOP
    assert set(values["servingEngineSpec"]) <= CHART_ENGINE
    (model,) = values["servingEngineSpec"]["modelSpec"]
    assert set(model) <= CHART_MODEL
    assert set(model["vllmConfig"]) <= CHART_VLLM_CONFIG
    assert set(model["keda"]) <= CHART_KEDA
    assert "triggers" not in model["keda"]  # the chart's schema and KEDA disagree on its type
    assert model["keda"]["cooldownPeriod"] == 300
    assert values["routerSpec"]["routingLogic"] in CHART_ROUTER_LOGIC
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", model["name"])
    assert model["modelURL"] == profile.spec.model.repo
    assert model["requestGPU"] == profile.spec.engine.tensor_parallel_size
    assert isinstance(model["pvcStorage"], str)
    extra = model["vllmConfig"].get("extraArgs", [])
    assert not CHART_FLAGS & set(extra)
    assert "--model" not in extra
    assert all(isinstance(arg, str) for arg in extra)
    if profile.spec.embeddings_enabled:
        assert any("TEI" in note for note in notes)


def test_readme_says_how_to_build_and_push_the_gateway_image(tmp_path: Path) -> None:
    """#16 item 4: the image the gateway Deployment names can be built from the checkout."""
    profile = load_profile(ROOT / "profiles" / "l40s-rag.yaml")
    written = k8s_export(profile, box_for_export(profile), tmp_path / "out")
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    image = K8sOptions().gateway_image
    assert "built from this repository" not in readme
    assert f"docker build -f Containerfile -t REGISTRY/{image} ." in readme
    assert f"docker push REGISTRY/{image}" in readme
    assert "pip wheel . -w dist" in readme
    [deployment] = [p for p in written if p.match("*-deployment-l40s-rag-gateway.yaml")]
    containers = yaml.safe_load(deployment.read_text())["spec"]["template"]["spec"]["containers"]
    assert containers[0]["image"] == image
    containerfile = (ROOT / "Containerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["appliance", "gateway"]' in containerfile
    assert "USER 10001:10001" in containerfile  # numeric: runAsNonRoot can verify it
    assert re.search(
        r"ARG BASE_IMAGE=\S+:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}\n", containerfile
    )


def test_a_gateway_serving_tls_gets_its_files_and_is_probed_over_https(tmp_path: Path) -> None:
    # The profile in the ConfigMap names spec.gateway.tls's files: without them mounted the
    # gateway cannot start, and probes or a scrape in plain HTTP never see it ready.
    profile = with_gateway_tls(load_profile(ROOT / "profiles" / "l40s-rag.yaml"))
    documents = [
        yaml.safe_load(yaml.safe_dump(d)) for d in manifests(profile, box_for_export(profile))
    ]
    for document in documents:
        if document["kind"] != "ScaledObject":
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert not _of_kind(documents, "Secret")  # referenced, never written
    gateway = _one(documents, "Deployment", "gateway")
    pod = gateway["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    secret = f"{profile.metadata.name}-gateway-tls"
    (volume,) = [
        v for v in pod["spec"]["volumes"] if v.get("secret", {}).get("secretName") == secret
    ]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == volume["name"]}
    assert mounts[str(CERT_FILE)]["subPath"] == "tls.crt"
    assert mounts[str(KEY_FILE)]["subPath"] == "tls.key"
    written = k8s_export(profile, box_for_export(profile), tmp_path / "out")
    readme = written[-1].read_text(encoding="utf-8")
    assert f"create secret tls {secret} --cert=" in readme


def test_a_plain_http_gateway_has_no_tls_objects() -> None:
    profile = load_profile(ROOT / "profiles" / "l40s-rag.yaml")
    text = yaml.safe_dump_all(manifests(profile, box_for_export(profile)))
    assert "gateway-tls" not in text
    assert "HTTPS" not in text
    assert "prometheus.io/scheme" not in text
