"""Import boundaries that keep the CLI fast over SSH and the vendor SDKs in their adapters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("textual", "docker", "pynvml", "huggingface_hub", "httpx", "starlette", "uvicorn")


def _modules_after(code: str) -> set[str]:
    probe = textwrap.dedent(
        f"""
        import json, sys
        {code}
        print(json.dumps(sorted(sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_importing_the_cli_loads_no_vendor_sdk() -> None:
    assert _heavy(_modules_after("import appliance.cli")) == []


def test_help_imports_no_command_group() -> None:
    # `appliance --help` reads the command table; the groups load only for their own commands.
    loaded = _modules_after(
        "import sys; sys.argv = ['appliance', '--help']\n"
        "        import appliance.cli as c\n"
        "        try:\n"
        "            c.run()\n"
        "        except SystemExit:\n"
        "            pass"
    )
    groups = sorted(
        m for m in loaded if m.startswith("appliance.cli.") and m != "appliance.cli.base"
    )
    assert groups == []
    assert "typing" not in loaded
    assert "pathlib" not in loaded


def test_building_the_parser_loads_no_vendor_sdk() -> None:
    loaded = _modules_after("import appliance.cli as c; c.build_parser()")
    assert _heavy(loaded) == []


@pytest.mark.parametrize("module", ["appliance.profile", "appliance.catalog", "appliance.errors"])
def test_pure_core_loads_no_io_library(module: str) -> None:
    assert _heavy(_modules_after(f"import {module}")) == []


def test_hardware_package_imports_its_sdks_lazily() -> None:
    loaded = _modules_after("import appliance.hardware")
    assert not {"pynvml", "docker"} & {m.split(".")[0] for m in loaded}
