"""`appliance` run as a real process on a machine without a GPU: the CLI's own `main()`, with
the test suite's one switch, `SpecOptions(gpu_requests=False)`, made the default.

Tests that must send the CLI real signals (SIGHUP, SIGTERM, SIGKILL) run it as
`python -m tests.support.appliance_no_gpu apply PROFILE --yes`; everything else is the shipped
code path (box detection, weights check, preflight, apply, rollback).
"""

from __future__ import annotations

import functools

from appliance.runtime import apply, specs


def main() -> None:
    no_gpu = functools.partial(specs.SpecOptions, gpu_requests=False)
    specs.SpecOptions = no_gpu  # type: ignore[misc]
    apply.SpecOptions = no_gpu  # type: ignore[misc]
    from appliance.cli import main as appliance_main

    appliance_main()


if __name__ == "__main__":
    main()
