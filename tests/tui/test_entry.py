"""`llm-appliance`'s entry point: arguments, errors before any screen, and import weight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import ExitCode
from appliance.tui import build_parser, main


def test_importing_the_entry_point_loads_no_textual() -> None:
    code = "import json, sys, appliance.tui; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert not [m for m in json.loads(out) if m.split(".")[0] == "textual"]


def test_an_unknown_simulated_box_is_an_error_before_any_screen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--simulate", "gtx-nonsense"])
    assert exit_info.value.code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "cannot simulate 'gtx-nonsense'" in err
    assert "l40s" in err


def test_arguments() -> None:
    args = build_parser().parse_args(["--simulate", "2x4090", "--profiles-dir", "/tmp"])
    assert args.simulate == "2x4090"
    assert args.profile is None


def test_a_simulated_boxs_state_is_removed_when_the_process_ends() -> None:
    code = (
        "from appliance.tui.services import simulated_services; "
        "print(simulated_services('l40s').fallback.state_file.parent)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    state = Path(out.strip())
    assert state.name.startswith("llm-appliance-sim-")
    assert not state.exists()


def test_without_a_terminal_it_refuses_in_one_line_and_exits_at_once(tmp_path: Path) -> None:
    """From cron or a script (stdin and stdout not a TTY) the app would draw escape codes into a
    log and spin; it says what to use instead and exits 2. The timeout only bounds a hang."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "llm-appliance"), "--simulate", "l40s"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "terminal" in lines[0]
    assert "appliance status" in lines[0]
    assert "\x1b" not in done.stderr


def _applied_copy(state_dir: Path) -> Path:
    """The copy of the applied profile `appliance apply` keeps where the gateway unit reads it."""
    from appliance.gateway.service import APPLIED_PROFILE

    state_dir.mkdir(parents=True, exist_ok=True)
    copy = state_dir / APPLIED_PROFILE
    copy.write_text((PROFILES / "l40s-rag.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return copy


PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def test_with_no_flag_the_app_finds_the_applied_profile_as_the_cli_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.operations.applied import PROFILE_ENV, applied_profile_path
    from appliance.tui import services_for

    copy = _applied_copy(tmp_path / "state")
    monkeypatch.setenv(PROFILE_ENV, str(copy))
    services = services_for(build_parser().parse_args([]))
    assert services.deployed_profile == copy
    assert services.profile is not None
    assert services.profile.metadata.name == "l40s-rag"
    assert services.monitor is not None  # so the app opens on the Monitor of what runs
    # The lookup both faces share: the flag, then the environment, then apply's copy.
    monkeypatch.delenv(PROFILE_ENV)
    assert applied_profile_path(None, state_dir=tmp_path / "state") == copy
    assert applied_profile_path(None, state_dir=tmp_path / "nothing-applied") is None
    given = tmp_path / "mine.yaml"
    assert applied_profile_path(given, state_dir=tmp_path / "state") == given
