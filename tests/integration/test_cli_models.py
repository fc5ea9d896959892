"""`appliance models`: the switched models' states, and pin / unpin / sleep / wake, through
the real CLI against `appliance gateway` (its own process, over HTTPS with a self-signed
certificate) in front of two vLLM doubles with sleep mode on. Every refusal is one line on
stderr with its exit code, never a traceback."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ExitCode
from tests.doubles import free_port, threaded_engine_double
from tests.support.gateway_process import appliance, running_gateway
from tests.support.tls import self_signed

ADMIN_KEY = "admin-key-for-the-models-cli-0123456789"

PROFILE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata: {{name: models-cli}}
spec:
  model: {{repo: acme/alpha, quantization: bf16, served_model_name: alpha}}
  embeddings: {{enabled: false}}
  ports: {{vllm: {alpha}, tei: {tei}, gateway: {gateway}}}
  switching:
    models:
      - {{repo: acme/beta, quantization: bf16, served_model_name: beta, port: {beta}}}
  gateway:
    host: 127.0.0.1
    admin_key_file: {root}/admin.key
    tls: {{cert_file: {root}/cert.pem, key_file: {root}/key.pem}}
  storage: {{models_dir: {root}/models, state_dir: {root}/state}}
"""


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """The profile and the gateway's base URL, with the gateway running."""
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")  # the doubles' sleep routes
    self_signed(tmp_path)
    (tmp_path / "admin.key").write_text(ADMIN_KEY + "\n")
    (tmp_path / "admin.key").chmod(0o600)
    with (
        threaded_engine_double(
            "--model", "/m/alpha", "--served-model-name", "alpha", "--enable-sleep-mode"
        ) as alpha,
        threaded_engine_double(
            "--model", "/m/beta", "--served-model-name", "beta", "--enable-sleep-mode"
        ) as beta,
    ):
        port = free_port()
        profile = tmp_path / "models-cli.yaml"
        profile.write_text(
            PROFILE.format(
                alpha=alpha.server_address[1], beta=beta.server_address[1], tei=free_port(),
                gateway=port, root=tmp_path,
            )
        )  # fmt: skip
        base = f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        with running_gateway(profile, base, trust):
            yield profile, base


def _models(*args: str) -> tuple[int, str, str]:
    done = appliance("models", *args)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def _states(profile: Path) -> dict[str, Any]:
    code, out, err = _models(str(profile), "--json")
    assert code == ExitCode.OK, err
    report: dict[str, Any] = json.loads(out)
    return {name: shown["state"] for name, shown in report["models"].items()} | {
        "pinned": report["pinned"]
    }


def test_models_shows_the_states_and_carries_out_each_order(box: tuple[Path, str]) -> None:
    profile, _ = box
    assert _states(profile) == {"alpha": "awake", "beta": "asleep-1", "pinned": None}
    code, out, err = _models(str(profile))
    assert code == ExitCode.OK, err
    assert out.splitlines()[0].split() == ["MODEL", "STATE", "IN", "FLIGHT", "HELD"]
    assert out.splitlines()[1].split()[:2] == ["alpha", "awake"]

    code, out, err = _models(str(profile), "pin", "beta")
    assert code == ExitCode.OK, err
    assert out.startswith("pin beta: done\n")
    assert "pinned" in out.splitlines()[-2]  # beta's row
    assert _states(profile) == {"alpha": "asleep-1", "beta": "awake", "pinned": "beta"}

    # Pinned: the gateway refuses to put it to sleep or wake another, in one line.
    code, _, err = _models(str(profile), "sleep", "beta")
    assert (code, err.count("\n")) == (ExitCode.BAD_INPUT, 1)
    assert "beta is pinned awake: unpin it first" in err

    code, out, err = _models(str(profile), "unpin", "beta", "--json")
    assert code == ExitCode.OK, err
    assert json.loads(out)["pinned"] is None
    assert _models(str(profile), "sleep", "beta")[0] == ExitCode.OK
    assert _models(str(profile), "wake", "alpha")[0] == ExitCode.OK
    assert _states(profile) == {"alpha": "awake", "beta": "asleep-1", "pinned": None}


def test_every_bad_input_is_one_line_with_its_exit_code(
    box: tuple[Path, str], tmp_path: Path
) -> None:
    profile, base = box
    cases: list[tuple[tuple[str, ...], ExitCode, str]] = [
        ((str(profile), "pin", "gamma"), ExitCode.BAD_INPUT, "'gamma' is not one of"),
        ((str(profile), "explode", "beta"), ExitCode.BAD_INPUT, "invalid choice: 'explode'"),
        ((str(profile), "pin"), ExitCode.BAD_INPUT, "pin needs a MODEL"),
        ((str(tmp_path / "nope.yaml"),), ExitCode.BAD_INPUT, "nope.yaml"),
    ]
    single = tmp_path / "single.yaml"
    text = profile.read_text()
    single.write_text(text[: text.index("  switching:")] + text[text.index("  gateway:") :])
    cases.append(((str(single),), ExitCode.BAD_INPUT, "has no spec.switching"))
    stopped = tmp_path / "stopped.yaml"
    port = base.rsplit(":", 1)[1]
    stopped.write_text(text.replace(f"gateway: {port}}}", f"gateway: {free_port()}}}"))
    cases.append(((str(stopped),), ExitCode.ENVIRONMENT, "did not answer"))
    for args, code, words in cases:
        got, out, err = _models(*args)
        assert (got, out) == (code, ""), (args, err)
        assert words in err, (args, err)
        assert err.startswith("error: "), (args, err)
    # The wrong admin key (a copy of the profile that reads another file): refused in one
    # line, and no key shown.
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-admin-key-0123456789\n")
    wrong.chmod(0o600)
    other = tmp_path / "other-key.yaml"
    other.write_text(text.replace(f"{tmp_path}/admin.key", str(wrong)))
    got, _, err = _models(str(other), "wake", "beta")
    assert got == ExitCode.REFUSED, err
    assert "refused the admin key" in err
    assert "not-the-admin-key" not in err
    assert ADMIN_KEY not in err
