"""`appliance compose export`: the same containers as a docker compose file.

Built from the very `ContainerSpec`s that apply creates, so the two cannot drift: same images,
flags, ports on 127.0.0.1, read-only weights, the same GPUs, healthchecks, restart policy and log
rotation. GPUs are reserved by UUID only when the file is exported on the box itself (stable
across reboots there, meaningless anywhere else); for a simulated or recorded box they are
reserved by index, as `nvidia-smi -L` numbers them, which any box with that many GPUs satisfies.

The compose file carries no appliance labels on purpose: containers that
compose starts are the operator's, and `appliance apply`/`down` never adopt or remove them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from appliance.catalog import Catalog
from appliance.errors import BadInputError
from appliance.fileio import write_output
from appliance.hardware.box import Box
from appliance.profile import Profile
from appliance.runtime.model import ContainerSpec
from appliance.runtime.specs import SpecOptions, container_specs, engine_image_choice

__all__ = ["EXAMPLE_BOXES", "compose_document", "compose_export", "compose_text", "write_examples"]

# The simulated box each ready-made profile in profiles/ is written for; `compose/` holds their
# exports, regenerated and compared by the tests.
EXAMPLE_BOXES: Final[dict[str, str]] = {
    "rtx4090-chat": "rtx4090",
    "2x4090-chat": "2x4090",
    "l40s-rag": "l40s",
    "a100-80g-70b": "a100-80g",
    "h100-70b-fp8": "h100",
}


def _escape(value: str) -> str:
    """Compose interpolates `$VAR`; a literal dollar is written `$$`."""
    return value.replace("$", "$$")


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _gpu_reservation(spec: ContainerSpec, box: Box) -> dict[str, Any] | None:
    """The compose `deploy.resources.reservations.devices` entry for the spec's GPUs."""
    if spec.gpu_device_ids is None:
        return None
    device: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
    if spec.gpu_device_ids == "all":
        device["count"] = "all"
    elif box.source == "nvml":
        device["device_ids"] = list(spec.gpu_device_ids)
    else:
        index = {gpu.uuid: str(gpu.index) for gpu in box.gpus}
        device["device_ids"] = [index.get(uuid, uuid) for uuid in spec.gpu_device_ids]
    return device


def _service(spec: ContainerSpec, depends_on: str | None, box: Box) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": spec.image,
        "container_name": spec.name,
        **(
            {"entrypoint": [_escape(arg) for arg in spec.entrypoint]}
            if spec.entrypoint is not None
            else {}
        ),
        "command": [_escape(arg) for arg in spec.command],
        "environment": {key: _escape(value) for key, value in sorted(spec.environment.items())},
        "ports": [f"{p.host_ip}:{p.host_port}:{p.container_port}" for p in spec.ports],
        "volumes": [
            {"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
            for m in spec.mounts
        ],
        "restart": spec.restart_policy,
        "logging": {
            "driver": "json-file",
            "options": {"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
        },
    }
    if spec.init:
        service["init"] = True
    if spec.ipc_mode is not None:
        service["ipc"] = spec.ipc_mode
    if spec.shm_size_bytes is not None:
        service["shm_size"] = spec.shm_size_bytes
    if spec.healthcheck is not None:
        check = spec.healthcheck
        service["healthcheck"] = {
            "test": ["CMD", *(_escape(part) for part in check.test)],
            "interval": _seconds(check.interval_s),
            "timeout": _seconds(check.timeout_s),
            "retries": check.retries,
            "start_period": _seconds(check.start_period_s),
        }
    device = _gpu_reservation(spec, box)
    if device is not None:
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    if depends_on is not None:
        service["depends_on"] = {depends_on: {"condition": "service_healthy"}}
    return service


def compose_document(
    profile: Profile,
    box: Box,
    *,
    catalog: Catalog | None = None,
    options: SpecOptions | None = None,
) -> dict[str, Any]:
    """The compose file as a mapping (services keyed by role).

    Raises BadInputError for several chat models (spec.switching): their engines must take
    turns sleeping as they start, which apply does and compose cannot."""
    if profile.spec.switching is not None:
        raise BadInputError(
            "compose export does not run several chat models (spec.switching): each engine "
            "must be put to sleep before the next one starts, which `appliance apply` does",
            hint="use `appliance apply`, or export a profile without spec.switching",
        )
    specs = container_specs(profile, box, catalog=catalog, options=options)
    services: dict[str, Any] = {}
    for spec in specs:
        # TEI starts after vLLM is healthy, as apply does: vLLM sizes its KV cache from the
        # GPU memory free when it starts.
        first = "vllm" if spec.role != "vllm" and "vllm" in services else None
        services[spec.role] = _service(spec, first, box)
    # No top-level `name`: Debian's docker-compose 1.29 refuses it; container_name fixes names.
    return {"services": services}


def compose_text(
    document: dict[str, Any], profile: Profile, box_name: str, image_why: str | None = None
) -> str:
    header = (
        f"# docker compose file for profile {profile.metadata.name} on {box_name},\n"
        "# generated by `appliance compose export`; edit the profile and export again.\n"
        "# Needs the NVIDIA Container Toolkit and the weights under the models directory.\n"
    )
    if image_why:
        engine = "SGLang" if profile.spec.engine.kind == "sglang" else "vLLM"
        header += f"# {engine} image: {image_why}.\n"
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)
    return header + body


def compose_export(
    profile: Profile,
    box: Box,
    *,
    box_name: str | None = None,
    output: Path | None = None,
    catalog: Catalog | None = None,
) -> str:
    """`appliance compose export PROFILE [-o FILE]`: the compose text; written to `output` too."""
    name = box_name or box.simulated or (box.host.hostname if box.host else "this box")
    document = compose_document(profile, box, catalog=catalog)
    choice = engine_image_choice(profile, box, catalog)
    text = compose_text(document, profile, name, choice.why if choice else None)
    if output is not None:
        write_output(output, text)
    return text


def write_examples(profiles_dir: Path, out_dir: Path) -> list[Path]:
    """Export every ready-made profile in `profiles_dir` for its example box into `out_dir`."""
    from appliance.hardware import detect_box
    from appliance.profile import load_profile

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for profile_name, box_name in sorted(EXAMPLE_BOXES.items()):
        profile = load_profile(profiles_dir / f"{profile_name}.yaml")
        path = out_dir / f"{profile_name}.yaml"
        compose_export(profile, detect_box(simulate=box_name), box_name=box_name, output=path)
        written.append(path)
    return written


if __name__ == "__main__":  # python -m appliance.runtime.compose --write compose
    import sys

    if sys.argv[1:2] != ["--write"] or len(sys.argv) != 3:
        sys.exit("usage: python -m appliance.runtime.compose --write DIR")
    for written_path in write_examples(Path("profiles"), Path(sys.argv[2])):
        sys.stdout.write(f"{written_path}\n")
