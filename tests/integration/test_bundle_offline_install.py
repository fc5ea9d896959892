"""install.sh --offline BUNDLE: the wheels inside a bundle are checked against its manifest and
installed with no index, into a fresh virtualenv (#20). The wheels are the ones `bundle create`
makes by default (`build_wheels`: this installation repacked, no index either)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bundle.create import build_wheels
from appliance.bundle.manifest import Target
from appliance.bundle.stream import BundleWriter

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "install.sh").read_text(encoding="utf-8")
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
T = Target(driver="nvidia", compute_capability="8.9", python=PYTHON, platform="linux-x86_64")


def offline_wheels_function() -> str:
    match = re.search(r"^offline_wheels\(\) \{\n.*?^\}\n", SCRIPT, flags=re.S | re.M)
    assert match
    return match.group(0)


def extract(bundle: Path, into: Path) -> subprocess.CompletedProcess[str]:
    body = f'{offline_wheels_function()}\npython={sys.executable}\noffline_wheels "$1" "$2"'
    return subprocess.run(
        ["bash", "-c", body, "install.sh", str(bundle), str(into)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("offline")
    out = root / "bundle.tar"
    with out.open("wb") as handle:
        writer = BundleWriter(handle)
        for wheel in build_wheels(root / "wheels", T):
            writer.add_file(f"wheels/{wheel.name}", "wheel", wheel)
        writer.finish("test", T)
    return out


def test_offline_install_uses_only_the_bundle(bundle: Path, tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    checked = extract(bundle, wheelhouse)
    assert checked.returncode == 0, checked.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The same pip call install.sh makes: no index at all, only the bundle's wheels.
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
            "--find-links", str(wheelhouse), "llm-appliance",
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    version = subprocess.run(
        [str(venv / "bin" / "appliance"), "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0, version.stderr
    assert "llm-appliance" in version.stdout


def test_a_changed_wheel_is_refused_naming_it(bundle: Path, tmp_path: Path) -> None:
    data = bytearray(bundle.read_bytes())
    data[data.index(b"PK\x03\x04") + 40] ^= 1
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bytes(data))
    (tmp_path / "w").mkdir()
    result = extract(broken, tmp_path / "w")
    assert result.returncode != 0
    assert re.search(r"bundle member wheels/\S+\.whl was altered", result.stderr)
    assert "Traceback" not in result.stderr


def test_the_script_refuses_a_missing_bundle_before_doing_anything(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "--offline", str(tmp_path / "nope.tar")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "is not a file" in result.stderr


def test_wheels_for_another_python_are_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "llm_appliance-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    other = tmp_path / "other.tar"
    with other.open("wb") as handle:
        writer = BundleWriter(handle)
        writer.add_file(f"wheels/{wheel.name}", "wheel", wheel)
        writer.finish("test", Target("nvidia", "8.9", "2.7", "linux-x86_64"))
    (tmp_path / "w").mkdir()
    result = extract(other, tmp_path / "w")
    assert result.returncode != 0
    assert "wheels for Python 2.7" in result.stderr
    assert not any((tmp_path / "w").iterdir())
