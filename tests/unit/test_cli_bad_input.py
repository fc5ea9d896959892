"""Bad input from #13's list: each is exit 2 or 3 with one clear line, never "unexpected".

Run in-process through `cli.run`, the same path as the console script, so the table is fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import cli, weights
from appliance.errors import BadInputError, ExitCode
from tests.support.hub_double import tiny_model_files

ROOT = Path(__file__).resolve().parents[2]
PROFILE = str(ROOT / "profiles" / "rtx4090-chat.yaml")
APPLIANCE = str(Path(sys.executable).parent / "appliance")
CASES: list[tuple[str, ...]] = [
    ("gateway", "--profile", PROFILE, "--port", "-1"),
    ("gateway", "--profile", PROFILE, "--port", "70000"),
    ("gateway", "--profile", PROFILE, "--chat-upstream", "http://[::1"),
    ("gateway", "--profile", PROFILE, "--fallback-upstream", "ftp://example"),
    ("estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "24", "--tp", "-2"),
    ("estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "24", "--tp", "0"),
    ("estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "nan"),
    ("estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "inf"),
    ("estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "1e308"),
    ("estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "24", "--vllm-version", "banana"),
    ("scrape", "http://127.0.0.1:9", "--interval", "0"),
    ("scrape", "http://127.0.0.1:9", "--interval", "-1"),
    ("scrape", "http://127.0.0.1:9", "--interval", "nan"),
    ("recommend", "--simulate", "rtx4090", "--workload", "chat", "--users", "0"),
    ("recommend", "--simulate", "rtx4090", "--workload", "chat", "--context", "0"),
]


def run(argv: list[str] | tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.run(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clean(code: int, output: str, *, allowed: tuple[ExitCode, ...]) -> None:
    assert code in allowed, output
    assert "unexpected" not in output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "→" in output, output  # the fix


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(a[:1] + a[-2:]) for a in CASES])
def test_issue_13_bad_values_are_refused_in_one_line(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = run(argv, capsys)
    assert_clean(code, output, allowed=(ExitCode.BAD_INPUT,))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: tmp / "missing" / "x.yaml", "is not a directory"),
        (lambda tmp: Path("/proc/no-such-dir/x.yaml"), "/proc/no-such-dir"),
        (lambda tmp: Path("/proc/x.yaml"), "cannot write /proc/x.yaml"),
    ],
    ids=["dir", "missing-parent", "missing-parent-proc", "unwritable"],
)
@pytest.mark.parametrize(
    "command",
    [
        ("recommend", "--simulate", "rtx4090", "--workload", "chat"),
        ("compose", "export", PROFILE, "--simulate", "rtx4090"),
        ("export", "prometheus"),
        ("export", "grafana"),
    ],
    ids=["recommend", "compose", "export-prometheus", "export-grafana"],
)
def test_output_files_that_cannot_be_written_are_refused(
    command: tuple[str, ...],
    make: object,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = make(tmp_path)  # type: ignore[operator]
    code, output = run([*command, "-o", str(target)], capsys)
    assert_clean(code, output, allowed=(ExitCode.BAD_INPUT,))
    assert expected in output


def test_export_k8s_into_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    code, output = run(["export", "k8s", PROFILE, "-o", str(tmp_path / "file")], capsys)
    assert_clean(code, output, allowed=(ExitCode.BAD_INPUT,))
    assert "not a directory" in output


def test_recommend_refuses_a_bad_output_before_ranking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = run(
        ["recommend", "--simulate", "rtx4090", "--workload", "chat", "-o", str(tmp_path)], capsys
    )
    assert code == ExitCode.BAD_INPUT
    assert "Ranking" not in output  # nothing was computed for an output it cannot write


def test_a_token_file_starting_with_a_bom_is_read_without_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbfhf_abcdef123456\r\n")  # Notepad's UTF-8 with BOM, CRLF
    path.chmod(0o600)
    token = weights.resolve_token(path, environ={})
    assert token is not None
    assert token.value == "hf_abcdef123456"


@pytest.mark.parametrize(
    "content",
    [b"hf_abc def", b"hf_abc\nhf_other", "hf_é".encode(), b"\xff\xfeh\x00f\x00"],
    ids=["space", "two-lines", "non-ascii", "utf-16"],
)
def test_a_token_file_with_more_than_a_token_is_refused_without_echoing_it(
    content: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(BadInputError) as caught:
        weights.resolve_token(path, environ={})
    assert "hf_abc" not in caught.value.render()


def _model(root: Path, files: int = 1) -> Path:
    root.mkdir(parents=True)
    for name, data in tiny_model_files(weight_bytes=4096).items():
        (root / name).write_bytes(data)
    for index in range(files):
        (root / f"extra-{index}.json").write_text("{}")
    return root


def _as_nobody() -> list[str] | None:
    """A prefix that runs a command as `nobody`, where root's bypass of file modes would hide
    an unreadable file; None when this test does not run as root."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's own tmp root is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="appliance-unreadable-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("what", ["file", "dir"])
def test_weights_import_of_an_unreadable_source_is_an_environment_error(
    what: str, shared_dir: Path
) -> None:
    prefix = _as_nobody()
    if prefix is None:
        pytest.skip("needs root to run the import as another user")
    source = _model(shared_dir / "src")
    source.chmod(0o755)
    for child in source.iterdir():
        child.chmod(0o644)
    if what == "file":
        (source / "config.json").chmod(0o000)
    else:
        source.chmod(0o311)  # can enter, cannot list
    models = shared_dir / "models"
    models.mkdir()
    models.chmod(0o777)
    argv = ["weights", "import", str(source), "--as", "acme/tiny", "--models-dir", str(models)]
    result = subprocess.run(
        [*prefix, APPLIANCE, *argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HOME": str(shared_dir), "XDG_STATE_HOME": str(shared_dir / "st")},
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert_clean(result.returncode, output, allowed=(ExitCode.ENVIRONMENT,))
    assert "permission denied" in output.lower()
    assert str(source) in output


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_directory_import_running_out_of_space_is_clean_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real ENOSPC mid-copy: a tmpfs with room for the bytes (the preflight passes) but for only
    # a few inodes, so creating the tenth file fails with "No space left on device".
    source = _model(tmp_path / "src", files=40)
    with _tmpfs(tmp_path / "models", "size=4g,nr_inodes=16") as models:
        code, output = run(
            ["weights", "import", str(source), "--as", "acme/tiny", "--models-dir", str(models)],
            capsys,
        )
        assert_clean(code, output, allowed=(ExitCode.ENVIRONMENT,))
        assert "filled up" in output
        # Lock files (under .locks/) stay by design; no weight byte may.
        left = [p for p in models.rglob("*") if p.is_file() and ".locks" not in p.parts]
        assert left == []


@pytest.mark.parametrize(
    "argv",
    [("status",), ("logs", "vllm"), ("down",), ("apply", PROFILE, "-y")],
    ids=["status", "logs", "down", "apply"],
)
def test_docker_unreachable_is_one_plain_line_naming_docker_host(
    argv: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # #16 item 15: docker-py's "('Connection aborted.', FileNotFoundError(2, …))" is not for people.
    host = f"unix://{tmp_path}/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host)
    code, output = run(argv, capsys)
    assert_clean(code, output, allowed=(ExitCode.ENVIRONMENT,))
    assert host in output
    assert "Connection aborted" not in output
    assert "FileNotFoundError" not in output


def _profile_with_state_dir(tmp_path: Path) -> Path:
    import yaml

    data = yaml.safe_load(Path(PROFILE).read_text(encoding="utf-8"))
    data["spec"].setdefault("storage", {})["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_cost_without_usage_says_the_gateway_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # #16 item 1: the advice named the monitor (status --watch, the TUI), which records nothing.
    profile = _profile_with_state_dir(tmp_path)
    code, output = run(["cost", str(profile), "--gpu-cost-per-hour", "2"], capsys)
    assert code == ExitCode.BAD_INPUT
    assert "gateway" in output
    assert "status --watch" not in output
    assert "Monitor screen" not in output


def test_cost_example_names_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = _profile_with_state_dir(tmp_path)
    code, output = run(["cost", str(profile)], capsys)
    assert code == ExitCode.BAD_INPUT
    assert "appliance cost PROFILE --gpu-cost-per-hour" in output


def test_the_cost_report_says_what_records_usage() -> None:
    from appliance.cost import render_cost
    from appliance.economics import ApiPrice, CostInputs, Usage, cost_report

    price = ApiPrice(name="x/y", input_per_million=3.0, output_per_million=15.0, source="test")
    text = render_cost(cost_report(Usage(), CostInputs(gpu_cost_per_hour=2.0), price))
    assert "recorded by the gateway" in text


def test_status_watch_into_a_file_prints_one_frame_per_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # #16 item 14: with stdout not a terminal, `status --watch > file` wrote nothing until Ctrl-C.
    from appliance.operations import status as monitor_status

    real = monitor_status.watch_status
    frames: list[str] = []

    def two_ticks(samplers: object, on_snapshot: object, **kwargs: object) -> object:
        def each(snapshot: object, history: object) -> None:
            on_snapshot(snapshot, history)  # type: ignore[operator]
            frames.append(capsys.readouterr().out)  # what had reached stdout by this tick

        kwargs["count"] = 2
        return real(samplers, each, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(monitor_status, "watch_status", two_ticks)
    assert cli.run(["status", "--simulate", "rtx4090", "--watch"]) == ExitCode.OK
    assert len(frames) == 2
    assert all("Alerts (" in frame for frame in frames), frames
    assert "\x1b[" not in "".join(frames)  # no cursor movement into a file


def test_scrape_of_a_name_that_does_not_resolve_does_not_say_connection_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # #16 item 17: `scrape notaurl` blamed a refused connection for a DNS failure.
    import json

    code, output = run(["scrape", "notaurl.invalid", "--count", "1", "--json"], capsys)
    assert code == ExitCode.OK
    [service] = json.loads(output.splitlines()[0])["services"]
    assert "refused" not in service["health_error"]
    assert "resolve" in service["health_error"]


def test_weights_help_names_the_models_dir_value_plainly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["weights", "import", "--help"])
    text = capsys.readouterr().out
    assert "MODELS_DIR_GIVEN" not in text
    assert "--models-dir DIR" in text


def test_keys_list_has_a_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = ["--profile", PROFILE, "--state-dir", str(tmp_path)]
    assert cli.run(["keys", "create", "alice", *state]) == ExitCode.OK
    capsys.readouterr()
    assert cli.run(["keys", "list", *state]) == ExitCode.OK
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "ID", "SCOPE", "LIMIT", "CREATED"]
    assert row.startswith("alice")


def test_an_engine_that_goes_away_mid_way_is_named_not_a_python_exception(
    tmp_path: Path,
) -> None:
    # #16 item 15, mid-operation: a daemon that answered the ping, then stopped (restarted,
    # socket removed), is an environment error naming the engine, not requests' exception text.
    import http.server
    import json
    import socketserver
    import threading

    from appliance.errors import EnvironmentNotReadyError
    from appliance.runtime.docker import DockerEngine

    class Daemon(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"OK" if self.path.endswith("/_ping") else json.dumps({"ApiVersion": "1.45"})
            data = body if isinstance(body, bytes) else body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Api-Version", "1.45")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    class UnixHttp(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            request, _ = super().get_request()
            return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)

    sock = tmp_path / "docker.sock"
    server = UnixHttp(str(sock), Daemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    engine = DockerEngine(f"unix://{sock}", timeout_s=5)
    server.shutdown()
    server.server_close()
    sock.unlink()
    try:
        with pytest.raises(EnvironmentNotReadyError) as caught:
            engine.managed_containers()
    finally:
        engine.close()
    text = caught.value.render()
    assert f"unix://{sock}" in text
    assert "list containers" in text
    assert "Connection aborted" not in text
    assert "FileNotFoundError" not in text


def test_a_listen_address_that_does_not_resolve_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to be refused as "cannot listen" with the hint about ports below 1024.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    argv = ["gateway", "--profile", PROFILE, "--host", "notahost.invalid", "--port", "18999"]
    code, output = run([*argv, "--state-dir", str(tmp_path)], capsys)
    assert_clean(code, output, allowed=(ExitCode.BAD_INPUT,))
    assert "notahost.invalid" in output
    assert "below 1024" not in output


def test_a_simulate_name_too_long_for_a_file_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--simulate` is tried as a file name too; one longer than the file system allows was an
    'unexpected OSError' (found by fuzzing `tune`)."""
    code, output = run(["plan", "profiles/rtx4090-chat.yaml", "--simulate", "a" * 300], capsys)
    assert_clean(code, output, allowed=(ExitCode.BAD_INPUT,))
