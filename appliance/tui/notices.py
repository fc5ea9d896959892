"""How a failure in a worker reaches the operator: one notice, in the core's own words (STYLE 8).

The app and every screen route `Worker.StateChanged` here, so a failed detect, plan, deploy or
key change always looks the same.
"""

from __future__ import annotations

from textual.worker import Worker, WorkerState

from appliance.errors import ApplianceError


def describe_error(error: BaseException) -> str:
    """A worker's exception in an operator's words (the core's own message when it has one)."""
    if isinstance(error, ApplianceError):
        return error.render()
    return f"{type(error).__name__}: {error}"


def notify_worker_failure(event: Worker.StateChanged) -> None:
    """The one place a failed worker becomes a visible notice."""
    worker = event.worker
    if event.state is WorkerState.ERROR and worker.error is not None:
        worker.node.app.notify(
            describe_error(worker.error),
            title=f"{worker.group or worker.name} failed",
            severity="error",
            timeout=10,
        )
