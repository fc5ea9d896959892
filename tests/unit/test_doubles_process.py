"""`tests.doubles.stop_process`: the one way the benches and doubles end a child they started."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.doubles import stop_process

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    child = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"  # the handler is in place
    started = time.monotonic()
    stop_process(child, timeout_s=0.5)
    assert child.returncode == -9  # SIGKILL
    assert time.monotonic() - started < 10
    child.stdout.close()


def test_a_child_that_has_exited_is_left_alone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stop_process(child)
    assert child.returncode == 0
