"""What every command group shares: the parser class, the command table, progress and loading.

`appliance --help` imports this module and argparse, nothing more: typing, pathlib, dataclasses
and threading are imported where they are used (together they were a third of the start-up).
"""

from __future__ import annotations

import argparse
import os
import sys

from appliance.errors import BadInputError, ExitCode

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2-4 ms of --help)

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any, Final, NoReturn, TypeAlias

Handler: TypeAlias = "Callable[[argparse.Namespace], ExitCode]"
# The `appliance COMMAND` table that each group's `register` fills.
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"


class Command:
    """One `appliance COMMAND`: the module of appliance.cli that registers it, and its line in
    `appliance --help`."""

    __slots__ = ("group", "summary")

    def __init__(self, group: str, summary: str) -> None:
        self.group = group
        self.summary = summary


# Every `appliance COMMAND`, in the order `--help` lists them. `run` imports only the group of
# the command it was given, so a command costs nothing until someone runs it.
COMMANDS: Final[dict[str, Command]] = {
    "detect": Command("box", "report the GPUs, host, Docker engine and container toolkit"),
    "validate": Command("box", "check profile files"),
    "estimate": Command(
        "sizing", "how vLLM would budget GPU memory for a model, and whether it fits"
    ),
    "recommend": Command(
        "sizing", "rank models, quantizations and vLLM flags that fit this box and workload"
    ),
    "status": Command(
        "monitor", "health, GPU use, throughput, latency and alerts of the running services"
    ),
    "scrape": Command("monitor", "watch any vLLM or TEI server by URL"),
    "cost": Command("cost", "is this box paying for itself? cost per 1M tokens and break-even"),
    "bench": Command(
        "bench", "measure the running stack through its gateway: tokens/s, TTFT, ITL, goodput"
    ),
    "tune": Command(
        "tune", "sweep max_num_seqs x max_num_batched_tokens, benchmark each, keep the best"
    ),
    "export": Command(
        "export", "Prometheus scrape config, Grafana dashboard, or Kubernetes manifests"
    ),
    "weights": Command("weights", "download, import, list and remove model weights"),
    "plan": Command("runtime", "what apply would change: create / replace / remove / keep"),
    "apply": Command("runtime", "make the box run the profile (idempotent; rolls back on failure)"),
    "down": Command("runtime", "stop and remove the appliance's containers (never anything else)"),
    "logs": Command("runtime", "a service's container logs"),
    "compose": Command("runtime", "export the profile as a docker compose file"),
    "gateway": Command(
        "gateway", "run the team's one OpenAI-compatible endpoint (keys, streaming, fallback)"
    ),
    "keys": Command("gateway", "create, list and revoke gateway API keys"),
    "fallback": Command(
        "gateway", "show or switch the API fallback: off | auto | always (survives restarts)"
    ),
    "models": Command(
        "models", "several chat models: their states, and pin, unpin, sleep or wake one"
    ),
    "bundle": Command(
        "bundle", "air-gap bundles: create on a connected machine, load on an offline box"
    ),
}


def state_dir() -> Path:
    """Where the appliance keeps its own logs and small state files for this user."""
    from pathlib import Path

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llm-appliance"


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as `BadInputError` (exit 2) instead of exiting itself."""

    def error(self, message: str) -> NoReturn:
        raise BadInputError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


class ByteProgress:
    """Download progress on stderr (bytes, rate, ETA), one bar per repository.

    Reports arrive from the download's worker threads; rich's Progress takes its own lock.
    """

    def __init__(self, *, transient: bool = False) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=transient,  # a bar left in a log file is noise
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def __call__(self, report: Any) -> None:
        """A weights `DownloadProgress` report."""
        self.update(report.repo, report.bytes_done, report.bytes_total, report.phase)

    def update(self, key: str, done: int, total: int | None, phase: str) -> None:
        # Bars start with the first report, so a prompt before any transfer is left alone.
        self._progress.start()
        task = self._tasks.get(key)
        if task is None:
            task = self._progress.add_task(key, total=total)
            self._tasks[key] = task
        self._progress.update(task, completed=done, total=total, description=f"{key} ({phase})")

    def note(self, text: str) -> None:
        """A line of text above the bars."""
        self._progress.console.print(text, highlight=False, markup=False)


def cancellable(work: Callable[[threading.Event], Any]) -> Any:
    """Run `work(cancel)` in a thread; Ctrl-C sets `cancel` and waits for it to stop cleanly."""
    import threading

    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work(cancel)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread below
            outcome["error"] = error

    thread = threading.Thread(target=target, name="appliance-work", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        print("\ncancelling; what arrived is kept and the next run resumes", file=sys.stderr)
        cancel.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def load_profiles(paths: Sequence[Path]) -> list[Any]:
    from appliance.profile import load_profile

    return [load_profile(path) for path in paths]
