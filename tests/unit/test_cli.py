"""The headless face as a user meets it: real console script, real exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import cli
from appliance.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = str(Path(sys.executable).parent / "appliance")
MALFORMED = sorted((ROOT / "tests" / "profiles" / "malformed").glob("*.yaml"))
NO_GPU = not Path("/dev/nvidia0").exists()


def appliance(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APPLIANCE, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU")
def test_detect_without_a_gpu_reports_the_missing_driver_and_exits_0() -> None:
    result = appliance("detect")
    assert result.returncode == ExitCode.OK, result.stderr
    assert "no NVIDIA driver" in result.stdout
    assert_no_traceback(result)


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU")
def test_detect_check_without_a_gpu_exits_3_and_says_why() -> None:
    result = appliance("detect", "--check")
    assert result.returncode == ExitCode.ENVIRONMENT
    assert "cannot serve" in result.stderr
    assert_no_traceback(result)


def test_detect_simulated_l40s_as_json() -> None:
    result = appliance("detect", "--simulate", "l40s", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    box = json.loads(result.stdout)
    [gpu] = box["gpus"]
    assert 44 * 2**30 < gpu["memory_total_bytes"] < 49 * 2**30
    assert tuple(gpu["compute_capability"]) == (8, 9)


def test_detect_simulated_2x4090_shows_two_gpus_and_the_p2p_caveat() -> None:
    result = appliance("detect", "--simulate", "2x4090", "--json")
    box = json.loads(result.stdout)
    assert len(box["gpus"]) == 2
    assert any("--disable-custom-all-reduce" in finding["fix"] for finding in box["findings"])


def test_unknown_simulated_box_is_bad_input_listing_the_names() -> None:
    result = appliance("detect", "--simulate", "rtx9999")
    assert result.returncode == ExitCode.BAD_INPUT
    assert "l40s" in result.stderr
    assert_no_traceback(result)


def test_ready_made_profiles_validate() -> None:
    profiles = sorted(str(p) for p in (ROOT / "profiles").glob("*.yaml"))
    assert len(profiles) >= 5
    result = appliance("validate", *profiles)
    assert result.returncode == ExitCode.OK, result.stderr


def test_every_malformed_profile_exits_2_with_file_and_line() -> None:
    assert len(MALFORMED) >= 40
    # One process for the whole corpus keeps this fast; each file must be reported on its own.
    result = appliance("validate", *(str(p) for p in MALFORMED))
    assert result.returncode == ExitCode.BAD_INPUT
    assert_no_traceback(result)
    for path in MALFORMED:
        expect = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        line = expect.split("line ", 1)[1].split(",", 1)[0] if "line " in expect else None
        located = f"{path}:{line}" if line and line.strip() != "-" else str(path)
        assert located in result.stderr, f"{path.name}: no {located!r} in the report"


@pytest.mark.parametrize(
    "argv",
    [(), ("frobnicate",), ("detect", "--no-such-flag"), ("validate",)],
    ids=["no-command", "unknown-command", "unknown-flag", "missing-argument"],
)
def test_usage_errors_exit_2_without_traceback(argv: tuple[str, ...]) -> None:
    result = appliance(*argv)
    assert result.returncode == ExitCode.BAD_INPUT
    assert result.stderr.startswith("error: ")
    assert_no_traceback(result)


def test_help_and_version_exit_0() -> None:
    assert appliance("--help").returncode == 0
    version = appliance("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("llm-appliance ")


def _explode(args: object) -> ExitCode:
    raise RuntimeError("boom")


def test_an_unexpected_error_is_one_line_and_a_logged_trace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr("appliance.cli.box._cmd_detect", _explode)
    assert cli.run(["detect"]) == ExitCode.FAILED
    err = capsys.readouterr().err
    assert "unexpected RuntimeError: boom" in err
    assert "Traceback" not in err
    log = tmp_path / "llm-appliance" / "appliance.log"
    assert "Traceback" in log.read_text()
    assert str(log) in err


def test_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("appliance.cli.box._cmd_detect", _explode)
    assert cli.run(["--debug", "detect"]) == ExitCode.FAILED
    assert "Traceback" in capsys.readouterr().err


def test_estimate_json_has_the_budget_fields() -> None:
    result = appliance(
        "estimate", "llama-3.1-8b-instruct", "--quantization", "awq", "--simulate", "rtx4090",
        "--max-model-len", "8192", "--json",
    )  # fmt: skip
    assert result.returncode == ExitCode.OK, result.stderr
    estimate = json.loads(result.stdout)
    for field in ("weights_gib", "activation_gib", "non_torch_gib", "cuda_graph_gib"):
        assert estimate[field] >= 0
    assert estimate["fits"] is True
    assert estimate["kv_cache_tokens"] > 8192
    assert estimate["max_concurrency"] >= 1


def test_70b_bf16_on_one_4090_is_refused_with_the_reason_and_what_fits() -> None:
    result = appliance(
        "estimate", "llama-3.3-70b-instruct", "--quantization", "bf16", "--simulate", "rtx4090"
    )
    assert result.returncode == ExitCode.REFUSED
    assert "does not fit" in result.stderr
    assert "--quantization awq" in result.stderr
    assert_no_traceback(result)


def test_recommend_writes_a_valid_profile(tmp_path: Path) -> None:
    out = tmp_path / "rag.yaml"
    result = appliance(
        "recommend", "--simulate", "l40s", "--workload", "rag", "--users", "30",
        "--context", "16384", "-o", str(out),
    )  # fmt: skip
    assert result.returncode == ExitCode.OK, result.stderr
    assert appliance("validate", str(out)).returncode == ExitCode.OK
    ranked = appliance(
        "recommend", "--simulate", "l40s", "--workload", "rag", "--users", "30",
        "--context", "16384", "--json",
    )  # fmt: skip
    top = json.loads(ranked.stdout)["candidates"][0]
    assert top["repo"] in out.read_text()  # the profile is the explained top choice


def test_output_into_a_closed_pipe_is_not_an_error() -> None:
    result = subprocess.run(
        f"{APPLIANCE} recommend --simulate rtx4090 --workload chat | head -1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert "Error" not in result.stderr
    assert "error" not in result.stderr


def test_weights_import_list_and_rm_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    header = json.dumps({"w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    (source / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"\0" * 8
    )
    (source / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    models = str(tmp_path / "models")

    imported = appliance(
        "weights", "import", str(source), "--as", "acme/tiny@v1", "--models-dir", models
    )
    assert imported.returncode == ExitCode.OK, imported.stderr
    listed = json.loads(appliance("weights", "list", "--json", "--models-dir", models).stdout)
    assert [(w["repo"], w["revision"]) for w in listed] == [("acme/tiny", "v1")]
    assert appliance("weights", "rm", "acme/tiny", "--models-dir", models).returncode == 0
    assert json.loads(appliance("weights", "list", "--json", "--models-dir", models).stdout) == []


def test_weights_pull_offline_is_an_environment_error(tmp_path: Path) -> None:
    result = appliance("weights", "pull", "acme/tiny", "--models-dir", str(tmp_path))
    assert result.returncode == ExitCode.ENVIRONMENT
    assert "weights import" in result.stderr
    assert_no_traceback(result)


def test_keys_and_fallback_through_the_cli(tmp_path: Path) -> None:
    box = ("--profile", str(ROOT / "profiles" / "l40s-rag.yaml"), "--state-dir", str(tmp_path))
    created = appliance("keys", "create", "alice", "--json", *box)
    assert created.returncode == ExitCode.OK, created.stderr
    key = json.loads(created.stdout)["key"]
    listed = appliance("keys", "list", "--json", *box)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["alice"]
    assert key not in listed.stdout
    assert key not in (tmp_path / "gateway" / "keys.json").read_text()
    assert ((tmp_path / "gateway" / "keys.json").stat().st_mode & 0o777) == 0o600

    assert appliance("fallback", "always", *box).returncode == ExitCode.OK
    mode = json.loads(appliance("fallback", "--json", *box).stdout)["mode"]
    assert mode == "always"  # read back by a new process: it survived the "restart"
    assert appliance("fallback", "sometimes", *box).returncode == ExitCode.BAD_INPUT
    assert appliance("keys", "revoke", "alice", *box).returncode == ExitCode.OK
    assert appliance("keys", "revoke", "alice", *box).returncode == ExitCode.BAD_INPUT


def test_estimate_refuses_a_max_model_len_above_the_models_limit() -> None:
    result = appliance(
        "estimate", "qwen2.5-7b-instruct", "--gpu", "l40s", "--max-model-len", "65536"
    )
    assert result.returncode == ExitCode.REFUSED, result.stdout
    assert "FITS" not in result.stdout
    assert "65536" in result.stderr
    assert "32768" in result.stderr
    assert_no_traceback(result)


def test_every_command_is_registered_by_the_group_the_table_names() -> None:
    # `appliance --help` lists the table without importing the groups; the table must not lie.
    import argparse

    from appliance.cli.base import COMMANDS

    for name, command in COMMANDS.items():
        parser = cli.build_parser(name)
        choices = next(
            action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
        )
        assert name in choices.choices, f"{command.group} does not register {name}"
    full = cli.build_parser()
    registered = next(
        action for action in full._actions if isinstance(action, argparse._SubParsersAction)
    )
    assert list(registered.choices) == list(COMMANDS)  # same commands, same order as --help
    listed = {pseudo.dest: pseudo.help for pseudo in registered._choices_actions}
    assert listed == {name: command.summary for name, command in COMMANDS.items()}


def test_top_level_help_lists_every_command_with_its_summary() -> None:
    from appliance.cli.base import COMMANDS

    result = appliance("--help")
    for name, command in COMMANDS.items():
        assert f"  {name} " in result.stdout
        assert command.summary in result.stdout
    assert appliance().returncode == ExitCode.BAD_INPUT
    unknown = appliance("nope")
    assert unknown.returncode == ExitCode.BAD_INPUT
    assert "invalid choice: 'nope'" in unknown.stderr
