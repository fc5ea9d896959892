"""Both faces call the same operations (issue #15): the verbs, and which face uses which.

The scan reads the faces' imports (lazy ones included), so a face that wires the domain itself
again, or a verb one face gains and the other lacks, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import appliance

PACKAGE = Path(appliance.__file__).parent

# verb → (module, used by the CLI, used by the TUI). A verb only one face uses says why.
VERBS: dict[str, tuple[str, bool, bool]] = {
    "applied_profile_path": ("applied", True, True),
    "plan": ("plan", True, True),
    "plan_from_nothing": ("plan", False, True),  # the CLI's --simulate reaches it inside `plan`
    "deploy_profile": ("deploy", True, True),
    "follow_service_logs": ("containers", True, True),
    "service_logs": ("containers", True, False),  # the TUI's Logs screen only follows
    "running_services": ("containers", False, True),  # the CLI names the service itself
    "service_status": ("containers", True, False),  # the TUI shows it in the Monitor
    "take_down": ("containers", True, False),  # `down`: deliberately not a TUI key
    "mounted_weights": ("containers", True, False),  # `weights rm`: no TUI screen yet
    "create": ("bundle", True, False),  # air-gap bundles are a headless job
    "load": ("bundle", True, False),
    "profile_samplers": ("status", True, True),
    "DockerRuntime": ("status", True, True),
    "simulated": ("status", True, True),
    "ModelControl": ("models", True, True),  # `appliance models`; the Monitor's n/p/z/u
}
# What the faces must reach only through an operation.
WIRING = {
    "appliance.runtime.docker",
    "appliance.runtime.containers",
    "appliance.operations.engine",
}


def _imports(face: str) -> set[tuple[str, str]]:
    """(module, name) of every `from X import name` in a face's files."""
    found: set[tuple[str, str]] = set()
    for path in (PACKAGE / face).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.update((node.module, alias.name) for alias in node.names)
    return found


@pytest.mark.parametrize("face", ["cli", "tui"])
def test_each_face_uses_the_verbs_the_table_says(face: str) -> None:
    imported = _imports(face)
    uses = {
        verb
        for verb, (module, *_) in VERBS.items()
        if (f"appliance.operations.{module}", verb) in imported
    }
    expected = {verb for verb, (_, cli, tui) in VERBS.items() if (cli if face == "cli" else tui)}
    assert uses == expected


@pytest.mark.parametrize("face", ["cli", "tui"])
def test_no_face_wires_the_engine_itself(face: str) -> None:
    reached = sorted(module for module, _ in _imports(face) if module in WIRING)
    assert reached == []
