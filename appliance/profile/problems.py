"""Problems in a profile: how validators report one with a hint, several at once, and the
error (exit 2) that carries them with file, line and field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic_core import PydanticCustomError

from appliance.errors import BadInputError

# How a value is shown in a message: short, and never a token.
_TOKEN_RE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|AKIA[0-9A-Z]{16}|gsk_[A-Za-z0-9]{20,}"
    r"|AIza[0-9A-Za-z_-]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|r8_[A-Za-z0-9]{20,})"
)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(value: object) -> str:
    """A value as the user wrote it, short, and never a token."""
    if isinstance(value, str):
        return "(a token, not shown)" if _TOKEN_RE.search(value) else f"'{_clip(value)}'"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int | float):
        return _num(value)
    if isinstance(value, list | tuple):
        return "a list"
    return "a mapping" if isinstance(value, dict) else type(value).__name__


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


# ---------------------------------------------------------------------------------------------
# Rule errors: how validators report a problem with a hint, and several problems at once.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Issue:
    """One problem found by a cross-field rule; `path` is relative to where the rule runs."""

    path: tuple[str | int, ...]
    message: str
    hint: str = ""


def _rule(message: str, hint: str = "") -> PydanticCustomError:
    """A single problem with a hint, raised from a field validator."""
    return PydanticCustomError("profile_rule", "{message}", {"message": message, "hint": hint})


def _raise_issues(issues: Sequence[_Issue]) -> None:
    """Raise every problem a rule found as one error; the loader splits it back up by path.

    Pydantic stops a validator at its first exception, so a model-level rule collects its issues
    and raises them together; programmatic callers still see one readable message.
    """
    if issues:
        text = "; ".join(f"{'.'.join(map(str, i.path)) or '(here)'}: {i.message}" for i in issues)
        raise PydanticCustomError(
            "profile_rules", "{text}", {"text": text, "issues": tuple(issues)}
        )


# ---------------------------------------------------------------------------------------------
# Problems and the error that carries them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileProblem:
    """One thing wrong with a profile file, located as precisely as the file allows.

    `line` and `column` are 1-based, None when the problem is the file as a whole. `field` is the
    dotted path (`spec.model.lora_adapters[0].repo`), "" for the file as a whole.
    """

    file: str
    line: int | None
    column: int | None
    field: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        """`file:line: field: message`, then the hint on its own line after an arrow."""
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        head = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{head}\n  → {self.hint}" if self.hint else head

    def _sort_key(self) -> tuple[int, int, str, str]:
        return (self.line or 0, self.column or 0, self.field, self.message)


class ProfileError(BadInputError):
    """A profile that cannot be used, with every problem found in it (exit code 2)."""

    def __init__(self, problems: Iterable[ProfileProblem]) -> None:
        unique = {(p.line, p.field, p.message): p for p in problems}
        self.problems: list[ProfileProblem] = sorted(unique.values(), key=ProfileProblem._sort_key)
        if not self.problems:
            msg = "ProfileError needs at least one problem"
            raise ValueError(msg)
        first = self.problems[0]
        count = len(self.problems)
        summary = first.render().split("\n", 1)[0]
        if count > 1:
            summary += f" (and {count - 1} more)"
        super().__init__(summary, first.hint)

    def render(self) -> str:
        """Every problem, in file order, each with its hint; a count when there are several."""
        lines = [p.render() for p in self.problems]
        if len(self.problems) > 1:
            lines.append(f"{self.problems[0].file}: {len(self.problems)} problems")
        return "\n".join(lines)
