"""The gateway's configuration from the checked-in profiles, and its own validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import BadInputError
from appliance.gateway.config import (
    ClientLimits,
    GatewayConfig,
    Listen,
    RemoteConfig,
    SecretSource,
    origin,
)
from appliance.profile import load_profile
from appliance.vocabulary import FallbackMode

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_gives_a_gateway_config(path: Path, tmp_path: Path) -> None:
    profile = load_profile(path)
    config = GatewayConfig.from_profile(profile, state_dir=tmp_path)
    spec = profile.spec
    assert config.chat_upstream == f"http://127.0.0.1:{spec.ports.vllm}/v1"
    assert config.chat_models[0] == spec.model.served_name
    assert config.state_file.parent == tmp_path / "gateway"
    assert config.default_fallback_mode is FallbackMode(spec.gateway.fallback.mode)
    if spec.gateway.fallback.remote is not None:
        assert config.remote is not None
        assert dict(config.remote.model_map) == spec.gateway.fallback.remote.model_map
    listen = Listen.from_profile(profile)
    assert listen.port == spec.ports.gateway
    # read_seconds waits for the first bytes; a stream that has begun may only go quiet briefly.
    assert config.local_timeouts.first_byte_s == spec.gateway.timeouts.read_seconds
    assert config.local_timeouts.idle_s == spec.gateway.timeouts.stream_idle_seconds


def test_overrides_front_engines_the_appliance_did_not_start(tmp_path: Path) -> None:
    profile = load_profile(PROFILES[0])
    config = GatewayConfig.from_profile(
        profile,
        state_dir=tmp_path,
        chat_upstream="http://127.0.0.1:9000/v1",
        embeddings_upstream="http://127.0.0.1:9001/v1",
        fallback_upstream="http://127.0.0.1:9002/v1",
    )
    assert config.chat_upstream == "http://127.0.0.1:9000/v1"
    assert config.embeddings_upstream == "http://127.0.0.1:9001/v1"
    assert config.remote is not None
    assert config.remote.base_url == "http://127.0.0.1:9002/v1"
    assert origin(config.chat_upstream) == "http://127.0.0.1:9000"


def test_config_refuses_what_cannot_work(tmp_path: Path) -> None:
    common = {"keys_file": tmp_path / "k", "state_file": tmp_path / "s"}
    with pytest.raises(BadInputError, match="not an http"):
        GatewayConfig(chat_upstream="ftp://x/v1", chat_models=("m",), **common)
    with pytest.raises(BadInputError, match="at least one"):
        GatewayConfig(chat_upstream="http://127.0.0.1:1/v1", chat_models=(), **common)
    with pytest.raises(BadInputError, match="needs a remote API"):
        GatewayConfig(
            chat_upstream="http://127.0.0.1:1/v1",
            chat_models=("m",),
            default_fallback_mode=FallbackMode.AUTO,
            **common,
        )
    remote = RemoteConfig("https://api.example.com/v1/", SecretSource(env="K"), {"m": "r"})
    assert remote.base_url == "https://api.example.com/v1"
    assert remote.remote_models == ("r",)


def test_preflight_names_what_stops_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from appliance.errors import EnvironmentNotReadyError
    from appliance.gateway.server import preflight

    monkeypatch.delenv("GW_PREFLIGHT_KEY", raising=False)
    config = GatewayConfig(
        chat_upstream="http://127.0.0.1:1/v1",
        chat_models=("m",),
        keys_file=tmp_path / "keys.json",
        state_file=tmp_path / "fallback.json",
        remote=RemoteConfig("https://api.example.com/v1", SecretSource(env="GW_PREFLIGHT_KEY")),
    )
    with pytest.raises(EnvironmentNotReadyError, match="GW_PREFLIGHT_KEY is not set"):
        preflight(config, "127.0.0.1", 0)
    monkeypatch.setenv("GW_PREFLIGHT_KEY", "k")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EnvironmentNotReadyError, match="already in use"):
            preflight(config, "127.0.0.1", port)
    with pytest.raises(BadInputError, match="both a certificate and a key"):
        preflight(config, "127.0.0.1", 0, ssl_certfile=tmp_path / "cert.pem")
    preflight(config, "127.0.0.1", 0)


def test_client_limits_refuse_what_would_disable_them() -> None:
    with pytest.raises(BadInputError, match="header_timeout_s"):
        ClientLimits(header_timeout_s=0)
    with pytest.raises(BadInputError, match="max_header_bytes"):
        ClientLimits(max_header_bytes=-1)
    with pytest.raises(BadInputError, match="open_files_reserve"):
        ClientLimits(open_files_reserve=-1)
