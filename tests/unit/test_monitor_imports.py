"""The monitor's pure modules import no IO library, so the TUI, the gateway and tests can use the
maths, the snapshot and the alerts without httpx, NVML or Docker coming along."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

IO_LIBRARIES = ("httpx", "httpcore", "anyio", "pynvml", "docker", "textual", "huggingface_hub")
PURE = (
    "appliance.monitor.maths",
    "appliance.monitor.series",
    "appliance.monitor.scrape",
    "appliance.monitor.snapshot",
    "appliance.monitor.alerts",
    "appliance.monitor.render",
)


@pytest.mark.parametrize("module", PURE)
def test_pure_monitor_module_imports_no_io_library(module: str) -> None:
    probe = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    assert sorted(loaded & set(IO_LIBRARIES)) == []


def test_maths_and_series_import_nothing_but_the_standard_library() -> None:
    probe = (
        "import json, sys; before = set(sys.modules); "
        "import appliance.monitor.maths, appliance.monitor.series; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    new = {name.split(".")[0] for name in json.loads(out)}
    assert sorted(new - set(sys.stdlib_module_names) - {"appliance"}) == []
