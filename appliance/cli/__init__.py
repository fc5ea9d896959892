"""`appliance …`: the headless face of llm-appliance.

Thin on purpose: parse arguments, call the core, print. Data goes to stdout (`--json` where it
makes sense), diagnostics to stderr, and the process exits with an `ExitCode`. One module per
command group (`COMMANDS` says which); only the group of the command being run is imported, and
heavy libraries (pydantic models, docker-py, pynvml, Textual) only inside the command that needs
them, so `appliance --help` starts fast over SSH (`bench/cli_startup.py`;
`tests/unit/test_imports.py` keeps it that way).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from appliance import __version__
from appliance.cli.base import COMMANDS, Handler, Parser, state_dir
from appliance.errors import ApplianceError, ExitCode

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2-4 ms of --help)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Final

__all__ = ["build_parser", "main", "run"]

_DESCRIPTION: Final = "Turn one GPU box into a private, OpenAI-compatible LLM service."
_EPILOG: Final = (
    "Exit codes: 0 ok, 1 failed (rolled back), 2 bad input, 3 environment not ready,\n"
    "4 nothing fits / refused."
)
_GROUPS: Final = list(dict.fromkeys(command.group for command in COMMANDS.values()))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `appliance`; with `command`, only that command's group is registered.

    `run` parses with the one group the command line names, so `appliance apply …` never builds
    (or imports) the other groups' parsers; with no command every group is registered."""
    parser = Parser(
        prog="appliance",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    _add_top_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    wanted = [COMMANDS[command].group] if command in COMMANDS else _GROUPS
    for group in wanted:
        importlib.import_module(f"appliance.cli.{group}").register(commands)
    return parser


def _add_top_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"llm-appliance {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks of unexpected errors"
    )


def _overview_parser() -> argparse.ArgumentParser:
    """`appliance` with no command, `--help` or `--version`: the command list from the table.

    Building every group's parser to print one line per command cost more than the
    interpreter's own start (issue #15); the table already holds those lines."""
    width = max(len(name) for name in COMMANDS) + 2
    listing = "\n".join(f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items())
    parser = Parser(
        prog="appliance",
        usage="appliance [-h] [--version] [--debug] COMMAND ...",
        description=f"{_DESCRIPTION}\n\ncommands:\n{listing}",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_top_options(parser)
    parser.add_argument(
        "command", metavar="COMMAND", choices=list(COMMANDS), help=argparse.SUPPRESS
    )
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option (top-level options take no
    value), if it names a command."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return word if word in COMMANDS else None


def _log_unexpected(error: BaseException) -> Path | None:
    """Write the full traceback to the state directory; return where, or None if it can't."""
    import datetime as dt
    import traceback

    try:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "appliance.log"
        with path.open("a", encoding="utf-8") as stream:
            stream.write(f"\n--- {dt.datetime.now(dt.UTC).isoformat()} {sys.argv!r}\n")
            stream.write("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def run(argv: Sequence[str] | None = None) -> ExitCode:
    """Run one command and return its exit code; never raises for a user's mistake."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        arguments = sys.argv[1:] if argv is None else list(argv)
        command = _command_of(arguments)
        parser = _overview_parser() if command is None else build_parser(command)
        args = parser.parse_args(arguments)
        handler: Handler = args.handler
        return handler(args)
    except ApplianceError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as error:
        # An apply says which signal and what it restored (`ApplyInterrupted`).
        print(f"interrupted: {error}" if str(error) else "interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `appliance … | head` closed the pipe: not an error. Silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception as error:  # noqa: BLE001 - last line of defence; tracebacks are for --debug
        if debug:
            import traceback

            traceback.print_exception(error)
        else:
            where = _log_unexpected(error)
            trace = f"; full trace in {where}" if where else ""
            print(
                f"error: unexpected {type(error).__name__}: {error}{trace}\n"
                "  → run again with --debug to see it here, and report it",
                file=sys.stderr,
            )
        return ExitCode.FAILED


def main() -> None:
    sys.exit(run())
