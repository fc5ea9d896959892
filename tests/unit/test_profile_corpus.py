"""Every malformed profile in tests/profiles/malformed/ is refused with its line, field and a fix.

Each file states its own expectation in its first line:

    # expect: line 12, spec.engine.gpu_memory_utilization, "≤ 0.98"

`line -` means the problem concerns the file as a whole (no line), `-` as the field means no field
(YAML-level problems). The fragment must appear in the problem's rendered text (message or hint).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.errors import ExitCode
from appliance.profile import ProfileError, load_profile

CORPUS = Path(__file__).resolve().parent.parent / "profiles" / "malformed"
EXPECT = re.compile(r'^# expect: line (?P<line>\d+|-), (?P<field>\S+), "(?P<fragment>.+)"$')
FILES = sorted(CORPUS.glob("*.yaml"))


def _expectation(path: Path) -> tuple[int | None, str, str]:
    # Read as bytes: one file is deliberately not UTF-8 after its first line.
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    match = EXPECT.match(first)
    assert match, f"{path.name}: first line must be an '# expect:' comment, got {first!r}"
    line = None if match["line"] == "-" else int(match["line"])
    field = "" if match["field"] == "-" else match["field"]
    return line, field, match["fragment"]


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 45


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_malformed_profile_is_refused_with_line_field_and_fix(path: Path) -> None:
    line, field, fragment = _expectation(path)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    error = caught.value
    assert error.exit_code == ExitCode.BAD_INPUT
    matching = [
        p for p in error.problems if p.line == line and p.field == field and fragment in p.render()
    ]
    assert matching, f"expected line {line}, {field!r}, {fragment!r}; got:\n{error.render()}"
    rendered = error.render()
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert where in rendered
    assert "Traceback" not in rendered
    # Every problem tells the user what to do, except where the message alone says it.
    assert all(p.hint for p in error.problems), rendered
