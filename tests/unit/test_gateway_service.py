"""`apply` installs the gateway as a systemd unit; checked against a temporary systemd dir."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.errors import OperationFailedError
from appliance.gateway.service import UNIT_NAME, install_gateway_service


class FakeSystemctl:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        code = 1 if self.fail_on and self.fail_on in args else 0
        return subprocess.CompletedProcess(list(args), code, "", "unit failed" if code else "")


def _install(tmp_path: Path, run: FakeSystemctl, text: str = "apiVersion: x\n") -> object:
    return install_gateway_service(
        text,
        tmp_path / "state",
        appliance_bin=Path("/opt/llm-appliance/.venv/bin/appliance"),
        systemd_dir=tmp_path / "systemd",
        present=lambda: True,
        run=run,
    )


def test_first_install_writes_the_unit_and_restarts(tmp_path: Path) -> None:
    run = FakeSystemctl()
    result = _install(tmp_path, run)
    unit = (tmp_path / "systemd" / UNIT_NAME).read_text()
    assert "ExecStart=/opt/llm-appliance/.venv/bin/appliance gateway --profile" in unit
    assert str(tmp_path / "state" / "profile.yaml") in unit
    assert "EnvironmentFile=-" in unit
    assert ((tmp_path / "state" / "profile.yaml").stat().st_mode & 0o777) == 0o600
    assert run.calls == [["daemon-reload"], ["enable", UNIT_NAME], ["restart", UNIT_NAME]]
    assert getattr(result, "changed", None) is True


def test_the_same_apply_again_only_makes_sure_it_runs(tmp_path: Path) -> None:
    _install(tmp_path, FakeSystemctl())
    run = FakeSystemctl()
    result = _install(tmp_path, run)
    assert run.calls[-1] == ["start", UNIT_NAME]
    assert getattr(result, "changed", None) is False
    changed = FakeSystemctl()
    _install(tmp_path, changed, "apiVersion: y\n")
    assert changed.calls[-1] == ["restart", UNIT_NAME]


def test_no_systemd_means_nothing_installed(tmp_path: Path) -> None:
    result = install_gateway_service(
        "x", tmp_path, appliance_bin=Path("/x"), systemd_dir=tmp_path, present=lambda: False
    )
    assert result is None
    assert list(tmp_path.iterdir()) == []


def test_a_failing_systemctl_is_reported(tmp_path: Path) -> None:
    with pytest.raises(OperationFailedError, match="systemctl restart"):
        _install(tmp_path, FakeSystemctl(fail_on="restart"))


def test_the_unit_gives_the_gateway_room_for_many_connections(tmp_path: Path) -> None:
    # systemd's default soft limit of 1024 open files let 1,000 half-sent requests lock every
    # real user out (issue #13).
    _install(tmp_path, FakeSystemctl())
    unit = (tmp_path / "systemd" / UNIT_NAME).read_text()
    assert "\nLimitNOFILE=65536\n" in unit
