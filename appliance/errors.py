"""One exception family for everything a person can be told, and the exit codes it maps to.

Every error the appliance raises on purpose is an `ApplianceError`: it carries what is wrong,
what to do about it, and the process exit code. The CLI's top level prints it and exits; nothing
below the faces prints or exits by itself.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of every `appliance` command; scripts depend on these numbers."""

    OK = 0
    FAILED = 1  # an operation failed (and was rolled back where that applies)
    BAD_INPUT = 2  # a file, flag or argument is wrong; nothing was changed
    ENVIRONMENT = 3  # the box is not ready: no driver, no Docker, no container toolkit
    REFUSED = 4  # nothing fits, or the request was refused on purpose
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class ApplianceError(Exception):
    """An error with a message a person can act on.

    `message` says what is wrong; `hint` says what to do. Both are plain text, one or more lines.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """The text shown to the user: the message, then the hint on its own line."""
        if self.hint:
            hint = self.hint.replace("\n", "\n    ")  # a multi-line fix stays under its arrow
            return f"{self.message}\n  → {hint}"
        return self.message


class BadInputError(ApplianceError):
    """A file, flag or argument is wrong; nothing has been changed."""

    exit_code = ExitCode.BAD_INPUT


class EnvironmentNotReadyError(ApplianceError):
    """The box lacks something the operation needs (driver, Docker, toolkit, disk)."""

    exit_code = ExitCode.ENVIRONMENT


class RefusedError(ApplianceError):
    """Nothing fits, or the request was refused on purpose."""

    exit_code = ExitCode.REFUSED


class OperationFailedError(ApplianceError):
    """An operation ran and failed; where it changed the box it was rolled back."""

    exit_code = ExitCode.FAILED
