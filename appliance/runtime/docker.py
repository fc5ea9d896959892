"""The Docker adapter: the only place the runtime talks to docker-py.

Every docker-py exception stops here and becomes an `ApplianceError` a person can act on; a
missing container or image is a value (`None` / `False`), not an exception (STYLE 6).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

import docker  # noqa: TID251 - this module is the runtime's Docker boundary
import docker.errors  # noqa: TID251
import docker.types  # noqa: TID251
import requests.exceptions

from appliance.errors import ApplianceError, EnvironmentNotReadyError, OperationFailedError
from appliance.runtime.engine import PullProgress
from appliance.runtime.lock import engine_endpoint
from appliance.runtime.model import (
    LABEL_MANAGED_BY,
    LABEL_PROFILE,
    LABEL_ROLE,
    LABEL_SPEC,
    LABEL_SPEC_HASH,
    LABEL_VERSION,
    MANAGED_BY,
    ContainerSpec,
    ObservedContainer,
)

_NS = 1_000_000_000


# What a call to the engine can raise: its refusal, or the connection lost under it.
_ENGINE_ERRORS = (docker.errors.APIError, requests.exceptions.ConnectionError)


def _engine_error(action: str, error: Exception, base_url: str | None = None) -> ApplianceError:
    if isinstance(error, requests.exceptions.ConnectionError):
        # The engine went away mid-way (restarted, socket gone): say so as `detect` does.
        from appliance.hardware.docker_probe import unreachable_error

        lost = unreachable_error(error, base_url)
        lost.message = f"Docker stopped answering while trying to {action}: {lost.message}"
        return lost
    explanation = getattr(error, "explanation", None) or str(error)
    return OperationFailedError(f"Docker could not {action}: {explanation}")


class DockerEngine:
    """A connection to one Docker engine (the default one, or `base_url`)."""

    def __init__(self, base_url: str | None = None, timeout_s: float = 60.0) -> None:
        try:
            if base_url is None:
                self._client = docker.from_env(timeout=int(timeout_s))
            else:
                self._client = docker.DockerClient(base_url=base_url, timeout=int(timeout_s))
            self._client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            # Worded as `detect` words it, with the address really used, not docker-py's text.
            from appliance.hardware.docker_probe import unreachable_error

            raise unreachable_error(error, base_url) from error
        self.base_url = base_url
        # One spelling per engine: what the apply lock is keyed by.
        self.endpoint = engine_endpoint(base_url)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ reading

    def managed_containers(self, profile: str | None = None) -> list[ObservedContainer]:
        """Every container carrying the appliance's label (optionally for one profile)."""
        filters = [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]
        if profile is not None:
            filters.append(f"{LABEL_PROFILE}={profile}")
        try:
            containers = self._client.containers.list(all=True, filters={"label": filters})
        except _ENGINE_ERRORS as error:
            raise _engine_error("list containers", error, self.base_url) from error
        observed = [self._observe(c.attrs) for c in containers]
        return sorted(observed, key=lambda c: (c.role, c.name))

    def inspect(self, container_id: str) -> ObservedContainer | None:
        try:
            attrs = self._client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        except _ENGINE_ERRORS as error:
            raise _engine_error(
                f"inspect container {container_id[:12]}", error, self.base_url
            ) from error
        return self._observe(attrs)

    @staticmethod
    def _observe(attrs: dict[str, Any]) -> ObservedContainer:
        config = attrs.get("Config") or {}
        labels: dict[str, str] = config.get("Labels") or {}
        state = attrs.get("State") or {}
        health = (state.get("Health") or {}).get("Status")
        ports: dict[int, int] = {}
        for key, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
            for binding in bindings or []:
                ports[int(key.split("/")[0])] = int(binding["HostPort"])
        return ObservedContainer(
            id=attrs["Id"],
            name=str(attrs.get("Name", "")).lstrip("/"),
            role=cast("Any", labels.get(LABEL_ROLE, "vllm")),
            profile=labels.get(LABEL_PROFILE, ""),
            spec_hash=labels.get(LABEL_SPEC_HASH, ""),
            appliance_version=labels.get(LABEL_VERSION, ""),
            image=str(config.get("Image", "")),
            state=state.get("Status", "dead"),
            health=health if health in ("starting", "healthy", "unhealthy") else None,
            exit_code=state.get("ExitCode")
            if state.get("Status") in ("exited", "restarting")
            else None,
            oom_killed=bool(state.get("OOMKilled")),
            restart_count=int(attrs.get("RestartCount") or 0),
            started_at=state.get("StartedAt"),
            host_ports=ports,
            spec_json=labels.get(LABEL_SPEC),
            mounts=tuple(str(m["Source"]) for m in attrs.get("Mounts") or () if m.get("Source")),
        )

    def logs(self, container_id: str, tail: int = 50) -> str:
        try:
            raw = self._client.api.logs(container_id, tail=tail, stdout=True, stderr=True)
        except docker.errors.NotFound:
            return ""
        except _ENGINE_ERRORS as error:
            raise _engine_error(
                f"read logs of {container_id[:12]}", error, self.base_url
            ) from error
        return bytes(raw).decode("utf-8", errors="replace")

    def follow_logs(
        self, container_id: str, stop: threading.Event, tail: int = 100
    ) -> Iterator[str]:
        """Yield log lines as they come until `stop` is set or the container goes away."""
        try:
            stream = self._client.api.logs(
                container_id, stream=True, follow=True, tail=tail, stdout=True, stderr=True
            )
        except _ENGINE_ERRORS as error:
            raise _engine_error(
                f"follow logs of {container_id[:12]}", error, self.base_url
            ) from error
        # A quiet container sends nothing for minutes; closing the stream from a watcher is what
        # ends the blocked read at once when the operator quits (the TUI, Ctrl-C).
        done = threading.Event()

        def close_on_stop() -> None:
            while not done.is_set():
                if stop.wait(0.2):
                    stream.close()
                    return

        watcher = threading.Thread(target=close_on_stop, name="log-follow-stop", daemon=True)
        watcher.start()
        buffer = b""
        try:
            for chunk in stream:
                if stop.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    yield line.decode("utf-8", errors="replace")
        except (OSError, ValueError, AttributeError, requests.exceptions.RequestException):
            if not stop.is_set():
                raise
        finally:
            done.set()
            watcher.join(timeout=5)

    # ------------------------------------------------------------------ images

    def image_present(self, image: str) -> bool:
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        except _ENGINE_ERRORS as error:
            raise _engine_error(f"look up image {image}", error, self.base_url) from error
        return True

    def pull(self, image: str, progress: Callable[[PullProgress], None] | None = None) -> None:
        """Pull an image, reporting bytes summed over its layers."""
        repository, _, tag = image.rpartition(":")
        if not repository or "/" in tag:
            repository, tag = image, "latest"
        layers: dict[str, tuple[int, int | None]] = {}
        try:
            for event in self._client.api.pull(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise _pull_refused(image, str(event["error"]))
                detail = event.get("progressDetail") or {}
                layer = event.get("id")
                if layer and "current" in detail:
                    layers[layer] = (int(detail["current"]), detail.get("total"))
                if progress is not None:
                    done = sum(current for current, _ in layers.values())
                    totals = [total for _, total in layers.values()]
                    total = sum(t for t in totals if t) if totals and all(totals) else None
                    progress(PullProgress(image, str(event.get("status", "")), done, total))
        except docker.errors.APIError as error:
            raise _pull_refused(image, getattr(error, "explanation", None) or str(error)) from error
        except requests.exceptions.RequestException as error:
            raise _pull_refused(image, str(error)) from error

    def image_identity(self, image: str) -> tuple[str, int] | None:
        """(image id, size in bytes) of a local image, or None when it is not on this box."""
        try:
            attrs = self._client.images.get(image).attrs
        except docker.errors.ImageNotFound:
            return None
        except _ENGINE_ERRORS as error:
            raise _engine_error(f"look up image {image}", error, self.base_url) from error
        return str(attrs.get("Id", "")), int(attrs.get("Size") or 0)

    def save_image(self, image: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """`docker save IMAGE` as a stream of chunks; the archive keeps the tag."""
        try:
            yield from self._client.api.get_image(image, chunk_bytes)
        except docker.errors.ImageNotFound as error:
            raise OperationFailedError(f"image {image} is not on this box") from error
        except _ENGINE_ERRORS as error:
            raise _engine_error(f"save image {image}", error, self.base_url) from error

    def load_images(self, archive: BinaryIO) -> list[str]:
        """`docker load` from an open archive (streamed); the names it loaded."""
        try:
            loaded = []
            for event in self._client.api.load_image(archive):  # type: ignore[no-untyped-call]
                if "errorDetail" in event:
                    raise OperationFailedError(
                        f"Docker refused the image archive: {event['errorDetail'].get('message')}"
                    )
                stream = str(event.get("stream", ""))
                for prefix in ("Loaded image: ", "Loaded image ID: "):
                    if stream.startswith(prefix):
                        loaded.append(stream[len(prefix) :].strip())
        except _ENGINE_ERRORS as error:
            raise _engine_error("load an image archive", error, self.base_url) from error
        return loaded

    def remove_image(self, image: str) -> None:
        """Remove a tag this box holds (and its layers, if nothing else uses them)."""
        try:
            self._client.images.remove(image)
        except docker.errors.ImageNotFound:
            return
        except _ENGINE_ERRORS as error:
            raise _engine_error(f"remove image {image}", error, self.base_url) from error

    # ------------------------------------------------------------------ changing

    def create(self, spec: ContainerSpec, name: str | None = None) -> str:
        """Create (not start) the container for `spec`; return its id."""
        host_config = self._client.api.create_host_config(
            port_bindings={f"{p.container_port}/tcp": (p.host_ip, p.host_port) for p in spec.ports},
            mounts=[
                docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only)
                for m in spec.mounts
            ],
            device_requests=_device_requests(spec),
            ipc_mode=spec.ipc_mode,
            init=spec.init,
            shm_size=spec.shm_size_bytes,
            restart_policy={"Name": spec.restart_policy}
            if spec.restart_policy != "on-failure"
            else {"Name": "on-failure", "MaximumRetryCount": 5},
            log_config=docker.types.LogConfig(
                type="json-file",
                config={"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
            ),
        )
        healthcheck = None
        if spec.healthcheck is not None:
            check = spec.healthcheck
            healthcheck = docker.types.Healthcheck(
                test=["CMD", *check.test],
                interval=int(check.interval_s * _NS),
                timeout=int(check.timeout_s * _NS),
                retries=check.retries,
                start_period=int(check.start_period_s * _NS),
            )
        try:
            created = self._client.api.create_container(
                spec.image,
                command=list(spec.command) or None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                name=name or spec.name,
                environment=dict(spec.environment),
                labels=spec.labels(),
                ports=[p.container_port for p in spec.ports],
                host_config=host_config,
                healthcheck=healthcheck,
                detach=True,
            )
        except docker.errors.ImageNotFound as error:
            raise OperationFailedError(
                f"image {spec.image} is not on this box",
                hint=f"pull it (docker pull {spec.image}) or, on an air-gapped box, "
                f"`docker load -i image.tar` a copy saved elsewhere with `docker save`",
            ) from error
        except _ENGINE_ERRORS as error:
            raise _engine_error(f"create container {spec.name}", error, self.base_url) from error
        return str(created["Id"])

    def start(self, container_id: str) -> None:
        try:
            self._client.api.start(container_id)
        except docker.errors.APIError as error:
            explanation = getattr(error, "explanation", None) or str(error)
            if "could not select device driver" in explanation:
                raise EnvironmentNotReadyError(
                    f"Docker cannot give the container a GPU: {explanation}",
                    hint="install and configure the NVIDIA Container Toolkit: "
                    "apt-get install -y nvidia-container-toolkit && "
                    "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker",
                ) from error
            raise _engine_error(
                f"start container {container_id[:12]}", error, self.base_url
            ) from error

    def stop(self, container_id: str, timeout_s: int = 30) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            try:
                self._client.api.stop(container_id, timeout=timeout_s)
            except _ENGINE_ERRORS as error:
                raise _engine_error(
                    f"stop container {container_id[:12]}", error, self.base_url
                ) from error

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            try:
                self._client.api.remove_container(container_id, force=True)
            except _ENGINE_ERRORS as error:
                raise _engine_error(
                    f"remove container {container_id[:12]}", error, self.base_url
                ) from error

    def rename(self, container_id: str, name: str) -> None:
        try:
            self._client.api.rename(container_id, name)
        except _ENGINE_ERRORS as error:
            raise _engine_error(
                f"rename container {container_id[:12]} to {name}", error, self.base_url
            ) from error


def _device_requests(spec: ContainerSpec) -> list[docker.types.DeviceRequest] | None:
    if spec.gpu_device_ids is None:
        return None
    if spec.gpu_device_ids == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [
        docker.types.DeviceRequest(device_ids=list(spec.gpu_device_ids), capabilities=[["gpu"]])
    ]


def _pull_refused(image: str, reason: str) -> OperationFailedError:
    return OperationFailedError(
        f"cannot pull {image}: {reason}",
        hint="check the box's access to the registry; on an air-gapped box run "
        f"`docker save {image} -o image.tar` where it can be pulled, copy the file here and "
        "`docker load -i image.tar`",
    )
