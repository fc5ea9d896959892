"""What the gateway needs to run, as one frozen object (built from a profile or by hand).

Upstream base URLs are OpenAI-style and end in `/v1` (`http://127.0.0.1:8000/v1`): a request for
`/v1/chat/completions` goes to `<base>/chat/completions`. An engine's `/health` and `/metrics` are
at the root of the same origin, as vLLM and TEI serve them.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.gateway.files import read_private_secret
from appliance.gateway.policy import RoutingRules
from appliance.gateway.rollout import ROLLOUT_FILE
from appliance.gateway.switching import SwitchRules
from appliance.vocabulary import FallbackMode, SleepLevel

if TYPE_CHECKING:
    import ssl

    from appliance.profile import Profile
    from appliance.profile import Timeouts as ProfileTimeouts


@dataclass(frozen=True)
class Timeouts:
    """Per-upstream deadlines, in seconds.

    `first_byte_s` runs from sending the request to the response headers, and from them to the
    first body bytes: for a non-streamed completion the engine answers only when it has finished
    generating, and a stream's first token waits for the queue and the prefill, so it must cover
    a long wait. `idle_s` is the longest silence allowed between two chunks once the body has
    begun: a person watching a stream gives up after seconds, not minutes.
    """

    connect_s: float = 2.0
    first_byte_s: float = 600.0
    idle_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_byte_s", "idle_s"):
            if not getattr(self, name) > 0:
                raise BadInputError(f"timeout {name} must be positive, not {getattr(self, name)}")


@dataclass(frozen=True)
class ClientLimits:
    """What one client connection may cost the gateway before it is cut off.

    Every request crosses the gateway before a key is checked, so these bound what anyone who
    can reach the port can hold: the size and count of request headers (431 beyond them), how
    long a request head may take to arrive from its first byte (or from the connect), and how
    long a request body may stall. Near the process's open-files limit, the connections that
    are idle or still sending a head are closed oldest first to make room, keeping
    `open_files_reserve` descriptors for upstreams, files and new clients.
    """

    max_header_bytes: int = 64 * 1024  # request line and headers; nginx allows 4 x 8 KiB
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    open_files_reserve: int = 128

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_headers", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise BadInputError(f"client limit {name} must be positive, not {value}")
        if self.open_files_reserve < 0:
            raise BadInputError("open_files_reserve must be 0 or more descriptors")


def _check_url(url: str, what: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadInputError(
            f"{what} URL {url!r} is not an http(s) URL",
            hint="write it like http://127.0.0.1:8000/v1 or https://api.example.com/v1",
        )
    if parsed.query or parsed.fragment:
        raise BadInputError(f"{what} URL {url!r} must not carry a query or fragment")
    return url.rstrip("/")


def _freeze(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class SecretSource:
    """Where a secret lives: an environment variable or a 0600 file; never the profile itself."""

    env: str | None = None
    file: Path | None = None

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise BadInputError("a secret comes from exactly one of an env var or a file")

    def read(self, what: str) -> str:
        """The secret; raises `EnvironmentNotReadyError` naming the source (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise EnvironmentNotReadyError(
                    f"{what}: environment variable {self.env} is not set",
                    hint=f"export {self.env}=… in the gateway's environment (systemd: "
                    "EnvironmentFile=)",
                )
            return value
        assert self.file is not None
        return read_private_secret(self.file, what)

    def describe(self) -> str:
        return f"env {self.env}" if self.env is not None else f"file {self.file}"


@dataclass(frozen=True)
class RemoteConfig:
    """The hosted OpenAI-compatible API that takes the overflow.

    `model_map` turns the local model names clients use into the remote API's names. Embeddings
    go remote only for a model named in the map: vectors from another model would silently
    poison an index built with the local one.
    """

    base_url: str
    api_key: SecretSource | None  # None: send no key (a stand-in or a keyless internal API)
    model_map: Mapping[str, str] = field(default_factory=dict)
    timeouts: Timeouts = Timeouts(connect_s=5.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _check_url(self.base_url, "remote API"))
        object.__setattr__(self, "model_map", _freeze(self.model_map))

    @property
    def remote_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.model_map.values()))


@dataclass(frozen=True)
class SwitchingConfig:
    """Several chat models that take turns by sleeping (spec.switching): each served name's
    OpenAI base URL (its own vLLM, on 127.0.0.1), the one awake after apply, the rules."""

    upstreams: Mapping[str, str]
    initially_awake: str
    rules: SwitchRules = field(default_factory=SwitchRules)

    def __post_init__(self) -> None:
        checked = {n: _check_url(url, f"{n} upstream") for n, url in self.upstreams.items()}
        object.__setattr__(self, "upstreams", _freeze(checked))
        if self.initially_awake not in self.upstreams:
            raise BadInputError(f"{self.initially_awake!r} is not one of the switched models")


@dataclass(frozen=True)
class GatewayConfig:
    chat_upstream: str  # vLLM, e.g. http://127.0.0.1:8000/v1
    chat_models: tuple[str, ...]  # vLLM's served model names
    keys_file: Path
    state_file: Path
    embeddings_upstream: str | None = None  # TEI, e.g. http://127.0.0.1:8081/v1
    embeddings_model: str | None = None
    remote: RemoteConfig | None = None
    admin_key: SecretSource | None = None  # besides admin-scope keys from the keys file
    auth_required: bool = True
    default_fallback_mode: FallbackMode = FallbackMode.OFF  # until someone switches it
    queue_threshold: int | None = 16  # waiting requests in vLLM before `auto` overflows
    max_signal_age_s: float = 5.0
    probe_interval_s: float = 1.0  # the gateway's own /health + /metrics probe, if no monitor
    failure_cooldown_s: float = 2.0
    local_timeouts: Timeouts = Timeouts()
    max_body_bytes: int = 32 * 1024 * 1024
    max_connections_per_upstream: int = 1024
    client: ClientLimits = ClientLimits()
    switching: SwitchingConfig | None = None
    # Model updates (issue #19 point 3): where apply says which chat engine serves and whether
    # it is being replaced in place; requests held meanwhile, and for how long at most.
    rollout_file: Path | None = None
    update_hold_max_requests: int = 64
    update_hold_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "chat_upstream", _check_url(self.chat_upstream, "chat upstream"))
        if self.embeddings_upstream is not None:
            object.__setattr__(
                self,
                "embeddings_upstream",
                _check_url(self.embeddings_upstream, "embeddings upstream"),
            )
        if not self.chat_models:
            raise BadInputError("the gateway needs at least one served chat model name")
        if self.queue_threshold is not None and self.queue_threshold < 0:
            raise BadInputError("queue threshold must be 0 or more waiting requests")
        if self.default_fallback_mode is not FallbackMode.OFF and self.remote is None:
            raise BadInputError(
                f"fallback mode {self.default_fallback_mode.value} needs a remote API",
                hint="set gateway.fallback.remote.base_url in the profile, or use mode off",
            )

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        *,
        state_dir: Path | None = None,
        chat_upstream: str | None = None,
        embeddings_upstream: str | None = None,
        fallback_upstream: str | None = None,
    ) -> GatewayConfig:
        """The gateway's configuration for the engines `profile` deploys on this box.

        The overrides are `appliance gateway`'s flags: `state_dir` replaces `spec.storage.state_dir`
        (keys and mode then live under it unless the profile names a keys file), and the three URLs
        (OpenAI-style, ending in /v1) front engines the appliance did not start.
        """
        spec = profile.spec
        gateway = spec.gateway
        directory = gateway_state_dir(profile, state_dir)
        keys_file = gateway.keys_file or directory / "keys.json"
        admin_key = _secret(gateway.admin_key_env, gateway.admin_key_file)
        if admin_key is None and (directory / "admin.key").exists():
            # The default admin key file is optional: admin-scope keys from `keys create --admin`
            # work without it.
            admin_key = SecretSource(file=directory / "admin.key")
        fallback = gateway.fallback
        remote: RemoteConfig | None = None
        if fallback.remote is not None or fallback_upstream is not None:
            api = fallback.remote
            remote = RemoteConfig(
                base_url=fallback_upstream or str(api.base_url if api else ""),
                api_key=_secret(api.api_key_env, api.api_key_file) if api else None,
                model_map=dict(api.model_map) if api else {},
                timeouts=_timeouts(api.timeouts) if api else Timeouts(connect_s=5.0),
            )
        embeddings = spec.embeddings if spec.embeddings_enabled else None
        chat = chat_upstream or f"http://127.0.0.1:{spec.ports.vllm}/v1"
        switching: SwitchingConfig | None = None
        further: tuple[str, ...] = ()
        if spec.switching is not None:
            upstreams = {spec.model.served_name: chat}
            for m in spec.switching.models:
                upstreams[m.served_name] = f"http://127.0.0.1:{m.port}/v1"
            further = tuple(m.served_name for m in spec.switching.models)
            switching = SwitchingConfig(
                upstreams=upstreams,
                initially_awake=spec.model.served_name,
                rules=SwitchRules(
                    sleep_level=_sleep_level(profile),
                    hold_max_requests=spec.switching.hold_max_requests,
                    hold_timeout_s=spec.switching.hold_timeout_seconds,
                    drain_grace_s=spec.switching.drain_grace_seconds,
                    idle_sleep_s=spec.switching.idle_sleep_seconds,
                ),
            )
        return cls(
            chat_upstream=chat,
            chat_models=(
                spec.model.served_name,
                *(a.name for a in spec.model.lora_adapters),
                *further,
            ),
            keys_file=keys_file,
            state_file=directory / "fallback.json",
            embeddings_upstream=(
                embeddings_upstream
                or (f"http://127.0.0.1:{spec.ports.tei}/v1" if embeddings else None)
            ),
            embeddings_model=embeddings.served_name if embeddings else None,
            remote=remote,
            admin_key=admin_key,
            auth_required=gateway.require_api_key,
            default_fallback_mode=FallbackMode(fallback.mode),
            queue_threshold=fallback.queue_threshold,
            max_signal_age_s=fallback.metrics_max_age_seconds,
            local_timeouts=_timeouts(gateway.timeouts),
            switching=switching,
            rollout_file=directory / ROLLOUT_FILE,
        )

    @property
    def rules(self) -> RoutingRules:
        return RoutingRules(
            remote_configured=self.remote is not None,
            queue_threshold=self.queue_threshold,
            max_signal_age_s=self.max_signal_age_s,
            failure_cooldown_s=self.failure_cooldown_s,
        )


def _sleep_level(profile: Profile) -> SleepLevel:
    """spec.switching.sleep_level; for auto, the level `plan` showed and apply used, chosen
    the same way from this host's RAM (psutil's total, as `appliance detect` reads it)."""
    switching = profile.spec.switching
    assert switching is not None
    if switching.sleep_level != "auto":
        return switching.sleep_level
    import psutil

    from appliance.local_model import profile_sleep_level

    return profile_sleep_level(profile, int(psutil.virtual_memory().total))[0]


def _secret(env: str | None, file: Path | None) -> SecretSource | None:
    """A profile's `*_env` / `*_file` pair: the environment variable wins."""
    if env is not None:
        return SecretSource(env=env)
    return None if file is None else SecretSource(file=file)


def _timeouts(timeouts: ProfileTimeouts) -> Timeouts:
    """The profile's seconds: connect; read, up to the first body bytes; then stream idle."""
    return Timeouts(
        connect_s=timeouts.connect_seconds,
        first_byte_s=timeouts.read_seconds,
        idle_s=timeouts.stream_idle_seconds,
    )


def origin(base_url: str) -> str:
    """`http://host:port` of a base URL (where an engine serves /health and /metrics)."""
    parsed = urllib.parse.urlsplit(base_url)
    return f"{parsed.scheme}://{parsed.netloc}"


@dataclass(frozen=True)
class Listen:
    """Where the gateway listens, and with which TLS files (none: plain HTTP)."""

    host: str
    port: int
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @classmethod
    def from_profile(cls, profile: Profile) -> Listen:
        spec = profile.spec
        tls = spec.gateway.tls
        return cls(
            host=spec.gateway.host,
            port=spec.ports.gateway,
            tls_cert_file=tls.cert_file if tls else None,
            tls_key_file=tls.key_file if tls else None,
        )


def gateway_state_dir(profile: Profile, state_dir: Path | None = None) -> Path:
    """The gateway's own directory under the appliance's state directory."""
    return (state_dir or profile.spec.storage.state_dir) / "gateway"


# Listening on these, the gateway is reached on this box's loopback address.
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", "", "127.0.0.1", "::1", "localhost"})  # noqa: S104


def gateway_host(profile: Profile, host: str = "127.0.0.1") -> str:
    """Where the gateway answers, as a URL's host: `host` when it listens on every address (or
    loopback), else the one address it listens on (an IPv6 address in brackets)."""
    listens = profile.spec.gateway.host
    answers = host if listens in _ANY_ADDRESS else listens
    return f"[{answers}]" if ":" in answers else answers


def gateway_base_url(profile: Profile, host: str = "127.0.0.1") -> str:
    """The gateway's base URL for a command on this box (`gateway_host`); HTTPS when it serves
    TLS."""
    spec = profile.spec
    scheme = "https" if spec.gateway.tls is not None else "http"
    return f"{scheme}://{gateway_host(profile, host)}:{spec.ports.gateway}"


def gateway_trust(profile: Profile) -> ssl.SSLContext | Literal[True]:
    """What a command on this box trusts when it calls its own gateway (`httpx`'s `verify`).

    Plain HTTP: the default (`True`, nothing to verify). TLS: the gateway's own certificate
    file is the one trust anchor, so a self-signed certificate works and no public CA is
    trusted instead. The host name is not checked: these calls go to the loopback address (or
    the one address the gateway listens on), not to the name the certificate was issued for,
    and trusting only this file is the pin. A certificate file that cannot be read is an
    environment problem in one line, not a TLS traceback later.
    """
    import ssl

    tls = profile.spec.gateway.tls
    if tls is None:
        return True
    try:
        context = ssl.create_default_context(cafile=str(tls.cert_file))
    except (OSError, ssl.SSLError) as error:
        raise EnvironmentNotReadyError(
            f"cannot read the gateway's certificate {tls.cert_file}: {error}",
            hint="run as a user that can read spec.gateway.tls.cert_file",
        ) from None
    context.check_hostname = False
    # A chain file's leaf (or intermediate) anchors on its own, without its root CA.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
