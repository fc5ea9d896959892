"""The static checks are tests, so the one test command cannot skip them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCHES = tuple(sorted(str(path.relative_to(ROOT)) for path in (ROOT / "bench").glob("*.py")))


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("ruff", "check", "appliance", "tests", "bench"), id="ruff-check"),
        pytest.param(
            ("ruff", "format", "--check", "appliance", "tests", "bench"), id="ruff-format"
        ),
        pytest.param(("mypy", "--strict", "appliance"), id="mypy-strict"),
        # The benches are scripts no test runs end to end: the type check is what notices one
        # left behind by a change to what it calls (loadgen once called lean_upstream without
        # the argument TLS added).
        pytest.param(
            ("mypy", "--strict", "--explicit-package-bases", *BENCHES), id="mypy-strict-bench"
        ),
        pytest.param(("lint-imports",), id="import-contracts"),
    ],
)
def test_static_check(argv: tuple[str, ...]) -> None:
    result = _run(str(BIN / argv[0]), *argv[1:])
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
