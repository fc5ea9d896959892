"""`llm-appliance`: the admin's terminal app.

The Textual screens arrive with the TUI issue; until then this entry point shows the box report
the Box screen will show, says what is missing, and how to go on (`--simulate`, `appliance …`).
"""

from __future__ import annotations

import argparse
import sys

from appliance.errors import ApplianceError, ExitCode


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="llm-appliance",
        description="Open the llm-appliance terminal app on this GPU box.",
    )
    parser.add_argument(
        "--simulate",
        metavar="NAME",
        help="run on a simulated box (rtx4090, 2x4090, l40s, a100-80g, h100, …)",
    )
    args = parser.parse_args()

    from appliance.cli import DEFAULT_MODELS_DIR
    from appliance.hardware import detect_box, render_box

    try:
        box = detect_box(simulate=args.simulate, models_dir=DEFAULT_MODELS_DIR)
    except ApplianceError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        sys.exit(error.exit_code)
    print(render_box(box))
    print()
    if not box.gpus:
        print(
            "No NVIDIA GPU is visible on this machine, so nothing can be deployed here.\n"
            "To explore what the appliance would do on a real box, simulate one:\n"
            "  llm-appliance --simulate rtx4090      (or 2x4090, l40s, a100-80g, h100)"
        )
    print(
        "The interactive screens are not in this release yet; the headless commands are:\n"
        "  appliance detect [--simulate NAME] [--json] [--check]\n"
        "  appliance validate profiles/*.yaml"
    )
    sys.exit(ExitCode.OK)
