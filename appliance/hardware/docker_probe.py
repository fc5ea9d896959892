"""Is there a Docker engine, and can its containers be given an NVIDIA GPU?

Besides the runtime adapter, the only module that imports docker-py. It never raises: whatever
goes wrong (no socket, daemon down, permission denied on the socket, timeout) ends up in a
`DockerInfo` with `reachable=False` and a `problem` the findings turn into a fix. Every call has a
short timeout so `appliance detect` answers in seconds even when the daemon hangs.

GPU support is judged from three signals, any of which is enough for `docker run --gpus`:
the "nvidia" runtime registered in the daemon (`nvidia-ctk runtime configure`), the
nvidia-container-runtime-hook binary on this host (dockerd looks it up to serve `--gpus`), or
CDI devices named `nvidia.com/gpu=…` (`nvidia-ctk cdi generate`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import EnvironmentNotReadyError
from appliance.hardware.box import DockerInfo, DockerProblem
from appliance.hardware.findings import docker_unreachable_finding

log = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_TIMEOUT_S = 3  # docker-py takes whole seconds
NVIDIA_HOOK = "nvidia-container-runtime-hook"
# dockerd runs as root with root's PATH; ours may lack /usr/sbin or /usr/local/bin.
_HOOK_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/usr/local/sbin")
_MAX_CDI_SPEC_BYTES = 1 << 20


def probe_docker(base_url: str | None = None, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> DockerInfo:
    """Ask the engine at `base_url` (default: $DOCKER_HOST, else the system socket)."""
    url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        import docker  # noqa: TID251 - the Docker probe is one of docker-py's two doors
    except ImportError as error:
        return DockerInfo(base_url=url, reachable=False, problem="error", error=str(error))

    try:
        if base_url is None:  # honour DOCKER_HOST and DOCKER_TLS_VERIFY/DOCKER_CERT_PATH
            client = docker.DockerClient.from_env(timeout=timeout_s)
        else:
            client = docker.DockerClient(base_url=base_url, timeout=timeout_s)
    except Exception as error:  # noqa: BLE001 - every failure to connect is a finding, not a crash
        return _unreachable(url, error)
    try:
        version: dict[str, Any] = client.version()
        info: dict[str, Any] = client.info()
    except Exception as error:  # noqa: BLE001 - same: a half-answering daemon is still a finding
        return _unreachable(url, error)
    finally:
        client.close()

    local = url.startswith(("unix://", "npipe://"))
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    spec_dirs = tuple(str(d) for d in info.get("CDISpecDirs") or ())
    return DockerInfo(
        base_url=url,
        reachable=True,
        version=version.get("Version"),
        api_version=version.get("ApiVersion"),
        runtimes=runtimes,
        default_runtime=info.get("DefaultRuntime"),
        nvidia_runtime="nvidia" in runtimes,
        nvidia_hook=_hook_installed() if local else None,
        cdi_spec_dirs=spec_dirs,
        cdi_devices=_cdi_devices(info, spec_dirs, local=local),
    )


def _unreachable(url: str, error: BaseException) -> DockerInfo:
    problem = classify_connection_error(error, url)
    log.debug("docker at %s unreachable (%s): %s", url, problem, error)
    return DockerInfo(base_url=url, reachable=False, problem=problem, error=str(error))


def unreachable_error(
    error: BaseException, base_url: str | None = None
) -> EnvironmentNotReadyError:
    """A failed connection to the engine as `detect` words it: what, where (the real
    DOCKER_HOST), and the fix; for every command that needs Docker."""
    url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    finding = docker_unreachable_finding(_unreachable(url, error))
    return EnvironmentNotReadyError(finding.what, hint=finding.fix)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts, and exceptions carried in their args (urllib3 does)."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)


def _cause_kind(cause: BaseException) -> str | None:
    number = getattr(cause, "errno", None)
    if isinstance(cause, PermissionError) or number == errno.EACCES:
        return "permission"
    if isinstance(cause, FileNotFoundError) or number == errno.ENOENT:
        return "missing"
    if isinstance(cause, ConnectionRefusedError) or number == errno.ECONNREFUSED:
        return "refused"
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return "timeout"
    return None


def _text_kind(text: str) -> str | None:
    for needle, kind in (
        ("permission denied", "permission"),
        ("no such file", "missing"),
        ("connection refused", "refused"),
        ("timed out", "timeout"),
    ):
        if needle in text.lower():
            return kind
    return None


def classify_connection_error(error: BaseException, url: str) -> DockerProblem:
    """Which fix applies: install Docker, start it, fix the socket's permissions, or look closer.

    docker-py wraps the socket's OSError in requests' and urllib3's errors; the errno inside
    decides. A missing socket means "not installed" only when no docker binary exists either.
    """
    kinds = [_cause_kind(cause) for cause in _causes(error)]
    kinds.append(_text_kind(str(error)))
    found = [kind for kind in kinds if kind is not None]
    kind = "permission" if "permission" in found else (found[0] if found else None)
    if kind == "permission":
        return "permission-denied"
    if kind == "missing":
        return "not-running" if _docker_installed() else "not-installed"
    if kind == "refused":
        return "not-running"
    if kind == "timeout" or url.startswith(("tcp://", "ssh://", "http")):
        return "unreachable"
    return "error"


def _docker_installed() -> bool:
    return any(
        shutil.which(name) or any(Path(d, name).exists() for d in _HOOK_DIRS)
        for name in ("dockerd", "docker")
    )


def _hook_installed() -> bool:
    return bool(shutil.which(NVIDIA_HOOK)) or any(Path(d, NVIDIA_HOOK).exists() for d in _HOOK_DIRS)


def _cdi_devices(
    info: dict[str, Any], spec_dirs: tuple[str, ...], *, local: bool
) -> tuple[str, ...]:
    """CDI device names the daemon can hand out, e.g. "nvidia.com/gpu=0".

    Docker 28.2+ lists them itself (`DiscoveredDevices`). Older daemons with CDI enabled list only
    their spec directories: when the engine runs on this host, read the spec files there. A daemon
    that names no CDI directory cannot use CDI at all (Docker < 25, or the feature is off), so
    spec files on disk count for nothing.
    """
    discovered = info.get("DiscoveredDevices")
    if isinstance(discovered, list):
        return tuple(
            sorted(
                str(device.get("ID"))
                for device in discovered
                if isinstance(device, dict) and device.get("Source") == "cdi" and device.get("ID")
            )
        )
    if not local or not spec_dirs:
        return ()
    return read_cdi_specs(spec_dirs)


def read_cdi_specs(directories: tuple[str, ...]) -> tuple[str, ...]:
    """Fully qualified device names from the CDI spec files (YAML or JSON) in `directories`."""
    import yaml

    names: set[str] = set()
    for directory in directories:
        try:
            files = sorted(Path(directory).iterdir())
        except OSError:
            continue
        for path in files:
            if path.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                if path.stat().st_size > _MAX_CDI_SPEC_BYTES:
                    continue
                spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
                continue
            for device in spec.get("devices") or ():
                if isinstance(device, dict) and device.get("name") is not None:
                    names.add(f"{spec['kind']}={device['name']}")
    return tuple(sorted(names))
