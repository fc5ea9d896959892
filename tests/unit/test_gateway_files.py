"""Keys and the fallback mode on disk: hashes only, private modes, atomic replacement."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.gateway.config import SecretSource
from appliance.gateway.keys import (
    Scope,
    StaticAdminKey,
    create_key,
    list_keys,
    load_keyring,
    revoke_key,
)
from appliance.gateway.state import read_fallback, set_fallback, write_fallback
from appliance.vocabulary import FallbackMode


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_key_is_shown_once_and_stored_only_as_a_salted_hash(tmp_path: Path) -> None:
    keys = tmp_path / "gateway" / "keys.json"
    created = create_key(keys, "alice", rate_limit_per_minute=60)
    assert created.key.startswith("sk-appl-")
    assert created.key not in repr(created)
    text = keys.read_text()
    assert created.key not in text
    assert created.key.split("-", 3)[-1] not in text  # not even the secret part
    assert _mode(keys) == 0o600
    record = json.loads(text)["keys"][0]
    assert set(record) == {
        "name", "id", "scope", "created_at", "rate_limit_per_minute", "salt", "sha256"
    }  # fmt: skip
    second = create_key(keys, "bob")
    salts = {r["salt"] for r in json.loads(keys.read_text())["keys"]}
    assert len(salts) == 2
    ring = load_keyring(keys)
    assert ring.verify(created.key, Scope.API) == created.info
    assert ring.verify(second.key, Scope.API) == second.info
    assert ring.verify(created.key[:-1] + "x", Scope.API) is None
    assert ring.verify("sk-appl-000000000000-nope", Scope.API) is None
    assert ring.verify("garbage", Scope.API) is None
    assert [info.name for info in list_keys(keys)] == ["alice", "bob"]


def test_admin_keys_are_separate_from_api_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    admin = create_key(keys, "ops", admin=True)
    api = create_key(keys, "app")
    ring = load_keyring(keys)
    assert ring.verify(admin.key, Scope.ADMIN) is not None
    assert ring.verify(admin.key, Scope.API) is None
    assert ring.verify(api.key, Scope.ADMIN) is None
    static = StaticAdminKey.of("s3cret-admin")
    assert static.matches("s3cret-admin")
    assert not static.matches("s3cret-admiN")
    assert "s3cret" not in repr(static)


def test_revoke_removes_the_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    created = create_key(keys, "alice")
    assert revoke_key(keys, "alice").name == "alice"
    assert load_keyring(keys).verify(created.key, Scope.API) is None
    with pytest.raises(BadInputError, match="no key named 'alice'"):
        revoke_key(keys, "alice")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "ünï"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadInputError):
        create_key(tmp_path / "keys.json", name)


def test_duplicate_names_and_bad_limits_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    create_key(keys, "alice")
    with pytest.raises(BadInputError, match="already exists"):
        create_key(keys, "alice")
    with pytest.raises(BadInputError, match="positive"):
        create_key(keys, "bob", rate_limit_per_minute=0)


def test_concurrent_creations_lose_nothing(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    threads = [threading.Thread(target=create_key, args=(keys, f"user{i}")) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list_keys(keys)) == 16


def test_a_damaged_keys_file_is_bad_input(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text("{not json")
    with pytest.raises(BadInputError, match="damaged"):
        load_keyring(keys)


def test_fallback_mode_is_persisted_atomically(tmp_path: Path) -> None:
    state = tmp_path / "state" / "fallback.json"
    assert read_fallback(state, FallbackMode.AUTO).mode is FallbackMode.AUTO
    written = write_fallback(state, "always", changed_by="test")
    assert read_fallback(state).mode is FallbackMode.ALWAYS
    assert read_fallback(state).changed_by == "test"
    assert written.changed_at is not None
    assert _mode(state) == 0o600
    assert sorted(p.name for p in state.parent.iterdir()) == [
        ".fallback.json.lock",
        "fallback.json",
    ]


def test_set_fallback_refuses_what_cannot_work(tmp_path: Path) -> None:
    state = tmp_path / "fallback.json"
    with pytest.raises(BadInputError, match="needs a remote API"):
        set_fallback(state, "auto", remote_configured=False)
    with pytest.raises(BadInputError, match="unknown fallback mode"):
        set_fallback(state, "maybe", remote_configured=True)
    assert set_fallback(state, "off", remote_configured=False).mode is FallbackMode.OFF
    assert set_fallback(state, "AUTO", remote_configured=True).mode is FallbackMode.AUTO


def test_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_KEY", " from-env \n")
    assert SecretSource(env="GW_TEST_KEY").read("remote API key") == "from-env"
    monkeypatch.delenv("GW_TEST_KEY")
    with pytest.raises(EnvironmentNotReadyError, match="GW_TEST_KEY is not set"):
        SecretSource(env="GW_TEST_KEY").read("remote API key")
    secret = tmp_path / "remote.key"
    secret.write_text("from-file\n")
    secret.chmod(0o644)
    with pytest.raises(EnvironmentNotReadyError, match="readable by other users") as refused:
        SecretSource(file=secret).read("remote API key")
    assert "chmod 600" in refused.value.render()
    assert "from-file" not in refused.value.render()
    secret.chmod(0o600)
    assert SecretSource(file=secret).read("remote API key") == "from-file"
    with pytest.raises(BadInputError):
        SecretSource(env="A", file=secret)
