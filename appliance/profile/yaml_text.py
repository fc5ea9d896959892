"""YAML as a profile is read: SafeLoader machinery with YAML 1.2 core scalars, no aliases, no
duplicate keys, no inline secrets, and the line of every value kept by path.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import yaml
from yaml.reader import ReaderError

from appliance.profile.problems import _TOKEN_RE, ProfileProblem, _clip, _dotted, _show
from appliance.profile.values import _MAX_DEPTH, API_VERSION

# ---------------------------------------------------------------------------------------------
# YAML: SafeLoader machinery, YAML 1.2 core scalars, line numbers kept per path.
# ---------------------------------------------------------------------------------------------

_NULL_TAG: Final = "tag:yaml.org,2002:null"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MAP_TAG: Final = "tag:yaml.org,2002:map"

_INT_RE = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader's reader, scanner, parser and composer with YAML 1.2 core resolution.

    Only the node tree is used; `_Builder` turns it into plain data and remembers where every
    key came from. Aliases stop composition at once (a few lines of aliases can expand to
    gigabytes); anchors are recorded and reported.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchor_lines: list[int] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        is_alias = self.check_event(yaml.AliasEvent)  # peeks: sets current_event
        event = self.current_event
        mark = getattr(event, "start_mark", None)
        line = mark.line + 1 if mark is not None else 0
        if is_alias:
            raise _AliasFoundError(line)
        if getattr(event, "anchor", None) is not None:
            self.anchor_lines.append(line)
        return super().compose_node(parent, index)


# YAML 1.2 core schema only (SafeLoader's YAML 1.1 resolvers are dropped). Order matters: the
# first matching resolver wins, so ints are tried before floats.
_Loader.yaml_implicit_resolvers = {}
_Loader.add_implicit_resolver(_BOOL_TAG, _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))
_Loader.add_implicit_resolver(_NULL_TAG, _NULL_RE, ["~", "n", "N", ""])


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings YAML 1.2 would read as numbers (e.g. `1e5`).

    It keeps YAML 1.1's resolvers too, so `off`, `yes` and dates stay quoted and other YAML tools
    read the file the same way the appliance does. Lists are indented under their key, as people
    write them.
    """

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_Dumper.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
_Dumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))

_LINE_BREAKS: Final = frozenset("\n\r\x85\u2028\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Single-quoted and plain scalars fold line breaks (NEL and the Unicode separators included)
    # on the way back in; double quotes escape them, so text with breaks survives exactly.
    style = '"' if _LINE_BREAKS.intersection(data) else None
    return dumper.represent_scalar(_STR_TAG, data, style=style)


_Dumper.add_representer(str, _represent_str)


class _AliasFoundError(Exception):
    def __init__(self, line: int) -> None:
        super().__init__("alias")
        self.line = line


class _FatalError(Exception):
    """Raised inside the loader when nothing further can be checked."""

    def __init__(self, problems: list[ProfileProblem]) -> None:
        super().__init__("fatal")
        self.problems = problems


# Data as YAML gives it, before validation.
_Data: TypeAlias = "bool | int | float | str | list[_Data] | dict[str, _Data] | None"
_Path: TypeAlias = tuple[str | int, ...]

_SECRET_WORDS: Final = frozenset(
    {"password", "passwd", "secret", "secrets", "token", "apikey", "key", "credential",
     "credentials", "bearer", "authorization"}
)  # fmt: skip
_SECRET_EXEMPT_LAST: Final = frozenset({"env", "file", "path", "dir"})
_KEY_SOURCE_HINT: Final = (
    "secrets never go in the profile: put the key in an environment variable or a 0600 file and "
    "name it, e.g. api_key_env: OPENAI_API_KEY or api_key_file: /etc/llm-appliance/remote-api.key"
    " (a Hugging Face token is read from HF_TOKEN)"
)


def _key_words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _secret_named(key: str) -> bool:
    words = _key_words(key)
    if not words or words[-1] in _SECRET_EXEMPT_LAST:
        return False
    joined = "".join(words)
    return bool(_SECRET_WORDS.intersection(words)) or "apikey" in joined


def _token_kind(text: str) -> str | None:
    match = _TOKEN_RE.search(text)
    if match is None:
        return None
    prefix = re.match(r"[A-Za-z0-9]+[-_]?", match.group(0))
    return (prefix.group(0) if prefix else match.group(0)[:3]) + "…"


@dataclass
class _Builder:
    """Turns the node tree into plain data, recording the line of every key and list item.

    Everything wrong with the tree itself (duplicate keys, anchors, tags, literal secrets, keys
    that are not text) is collected as a problem; the data built alongside still goes through
    validation so that one run reports everything.
    """

    filename: str
    positions: dict[_Path, tuple[int, int]] = field(default_factory=dict)
    problems: list[ProfileProblem] = field(default_factory=list)
    secret_paths: set[_Path] = field(default_factory=set)
    # Paths whose problem is already reported; validation errors under them would only repeat it
    # (or echo a secret).
    reported: set[_Path] = field(default_factory=set)

    def problem(
        self, path: _Path, mark: yaml.Mark | None, message: str, hint: str | None = None
    ) -> None:
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        self.problems.append(
            ProfileProblem(self.filename, line, column, _dotted(path), message, hint)
        )

    def build(self, node: yaml.Node, path: _Path) -> _Data:
        if len(path) > _MAX_DEPTH:
            raise _FatalError(
                [
                    ProfileProblem(
                        self.filename,
                        node.start_mark.line + 1,
                        None,
                        "",
                        f"nested more than {_MAX_DEPTH} levels deep",
                        "a profile is a few levels of key: value; check the indentation",
                    )
                ]
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self._tag_problem(node, path)
            items: list[_Data] = []
            for index, item in enumerate(node.value):
                start = item.start_mark
                self.positions[(*path, index)] = (start.line + 1, start.column + 1)
                items.append(self.build(item, (*path, index)))
            return items
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: _Path) -> dict[str, _Data]:
        if node.tag != _MAP_TAG:
            self._tag_problem(node, path)
        result: dict[str, _Data] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            mark = key_node.start_mark
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(
                    path,
                    mark,
                    "a key must be plain text, not a list or mapping",
                    "write `key: value`; a `? ` at the start of a line makes a complex key",
                )
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str):
                self.problem(
                    path,
                    mark,
                    f"the key {_show(key)} is not text",
                    f"quote it: '{key_node.value}':",
                )
                continue
            here = (*path, key)
            if key in first_seen:
                self.problem(
                    here,
                    mark,
                    f"duplicate key (first at line {first_seen[key]}); YAML would keep only "
                    "the last one",
                    "keep one of them",
                )
            else:
                first_seen[key] = mark.line + 1
                self.positions[here] = (mark.line + 1, mark.column + 1)
            value = self.build(value_node, here)
            if (
                _secret_named(key)
                and isinstance(value, str | int)
                and not isinstance(value, bool)
                and str(value).strip()
                and here not in self.secret_paths
            ):
                self.secret_paths.add(here)
                self.problem(here, mark, "a literal secret in the profile", _KEY_SOURCE_HINT)
            result[key] = value
        return result

    def _tag_problem(self, node: yaml.Node, path: _Path) -> None:
        self.reported.add(path)
        tag = node.tag.replace("tag:yaml.org,2002:", "!!", 1)
        self.problem(
            path,
            node.start_mark,
            f"the YAML tag {tag} is not supported",
            "remove the tag (the !… before the value)",
        )

    def _scalar(self, node: yaml.Node, path: _Path) -> _Data:
        text: str = node.value
        kind = _token_kind(text)
        if kind is not None and path not in self.secret_paths:
            self.secret_paths.add(path)
            message = f"a literal secret in the profile ({kind} token)"
            self.problem(path, node.start_mark, message, _KEY_SOURCE_HINT)
        if node.tag == _STR_TAG:
            return text
        core = _CORE_SCALARS.get(node.tag)
        if core is None:
            self._tag_problem(node, path)
            return text
        pattern, convert = core
        if not pattern.match(text):
            short = node.tag[18:]
            message = f"'{_clip(text)}' is not a valid !!{short}"
            self.reported.add(path)
            self.problem(path, node.start_mark, message, f"remove the !!{short} tag")
            return None
        try:
            return convert(text)
        except ValueError:  # an int with more digits than Python converts
            self.reported.add(path)
            self.problem(path, node.start_mark, "a number too large to use", "check the digits")
            return None


def _to_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    return math.nan if lowered == ".nan" else float(text)


# YAML 1.2 core scalars: the pattern a plain or !!-tagged value must match, and its conversion.
_CORE_SCALARS: Final[dict[str, tuple[re.Pattern[str], typing.Callable[[str], _Data]]]] = {
    _NULL_TAG: (_NULL_RE, lambda _: None),
    _BOOL_TAG: (_BOOL_RE, lambda text: text.lower() == "true"),
    _INT_TAG: (_INT_RE, int),
    _FLOAT_TAG: (_FLOAT_RE, _to_float),
}


def _compose(text: str, filename: str) -> yaml.Node:
    """The single document's node tree, or a fatal error that says where YAML itself broke."""

    def fatal(line: int | None, message: str, hint: str | None = None) -> _FatalError:
        return _FatalError([ProfileProblem(filename, line, None, "", message, hint)])

    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader checks for control characters right here
        node = loader.get_single_node()
    except _AliasFoundError as exc:
        raise fatal(
            exc.line or None,
            "YAML aliases (*name) are not allowed in a profile",
            "write the values out in full; anchors and aliases can expand without bound",
        ) from None
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise fatal(
            line,
            f"a control character (U+{exc.character:04X}) that YAML does not allow",
            "remove it; a profile is plain text",
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text, filename) from None
    except RecursionError:
        raise fatal(None, "nested too deep to read", "check the brackets and indentation") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise fatal(
            None,
            "empty file: no profile in it",
            f"start with apiVersion: {API_VERSION}, kind: Profile, metadata: and spec:; "
            "see profiles/ for complete examples",
        )
    if loader.anchor_lines:
        raise _FatalError(
            [
                ProfileProblem(
                    filename,
                    line or None,
                    None,
                    "",
                    "YAML anchors (&name) are not allowed in a profile",
                    "remove the anchor and write values out in full",
                )
                for line in loader.anchor_lines
            ]
        )
    return node


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, filename: str) -> _FatalError:
    problem = exc.problem or "YAML syntax error"
    # An unclosed quote or bracket fails at the end of the file; where it opened is more useful.
    mark = exc.problem_mark
    if mark is None or ("end of stream" in problem and exc.context_mark is not None):
        mark = exc.context_mark
    line = mark.line + 1 if mark is not None else None
    if "another document" in problem:
        return _FatalError(
            [
                ProfileProblem(
                    filename,
                    line,
                    None,
                    "",
                    "a second YAML document (---) in the file; a profile is exactly one",
                    "put each profile in its own file",
                )
            ]
        )
    if "'\\t'" in problem or "tab character" in problem:
        tab_lines = [
            number
            for number, content in enumerate(text.splitlines(), start=1)
            if "\t" in content[: len(content) - len(content.lstrip(" \t"))]
        ] or ([line] if line else [])
        return _FatalError(
            [
                ProfileProblem(
                    filename,
                    number,
                    None,
                    "",
                    "a tab used for indentation; YAML allows only spaces",
                    "indent with spaces (2 per level)",
                )
                for number in tab_lines
            ]
        )
    hints = {
        "mapping values are not allowed": "a value that contains ': ' must be quoted",
        "could not find expected ':'": "each line of a mapping is `key: value`; check the line",
        "did not find expected key": "check the indentation: keys of one mapping line up",
        "expected <block end>": "check the indentation: keys of one mapping line up",
        "found unexpected end of stream": "a quote or bracket is not closed",
    }
    hint = next((h for k, h in hints.items() if k in problem), "check quoting and indentation")
    context = f" ({exc.context})" if exc.context else ""
    return _FatalError(
        [ProfileProblem(filename, line, None, "", f"YAML syntax error: {problem}{context}", hint)]
    )


_Scalar: TypeAlias = "str | int | float | bool"


def with_value(text: str, path: tuple[str, ...], value: _Scalar | None) -> str | None:
    """`text` with the scalar at mapping keys `path` set to `value`, inserted where a key on the
    path is missing, removed when `value` is None; every other character (comments, layout,
    quoting elsewhere) as it was. An entry goes into a block or a flow mapping as the text has
    it; what is missing below it is written as flow mappings (`engine: {max_num_seqs: 8}`).

    None when the text cannot be edited in place: not YAML, a key on the path that holds no
    mapping, or a target that is a list, a mapping or a `|`/`>` block scalar. For a valid
    profile only (it is composed again here, without the checks); callers that must be sure
    parse the result.
    """
    found = _entry_at(text, path)
    if found is None:
        return None
    mapping, depth, index = found
    if index is None:
        if value is None:
            return text
        written = _scalar_text(value)
        for inner in reversed(path[depth + 1 :]):
            written = f"{{{inner}: {written}}}"
        return _insert_entry(text, mapping, path[depth], written)
    target = mapping.value[index][1]
    if not isinstance(target, yaml.ScalarNode) or target.style in ("|", ">"):
        return None
    if value is None:
        return _without(text, path, mapping, index)
    start, end = target.start_mark.index, target.end_mark.index
    space = " " if start == end else ""  # `key:` with nothing after it
    return text[:start] + space + _scalar_text(value) + text[end:]


def _entry_at(text: str, path: tuple[str, ...]) -> tuple[yaml.MappingNode, int, int | None] | None:
    """The deepest mapping on `path` that `text` has, how many keys lead to it, and the index
    of the next key's entry in it (None: missing there); None when `text` is not YAML or a key
    holds no mapping."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for depth, key in enumerate(path):
        if not isinstance(node, yaml.MappingNode):
            return None
        index = next(
            (i for i, (k, _) in enumerate(node.value) if getattr(k, "value", None) == key), None
        )
        if index is None or depth == len(path) - 1:
            return node, depth, index
        node = node.value[index][1]
    return None  # an empty path


def _scalar_text(value: _Scalar) -> str:
    """`value` as one flow-context scalar (valid in block context too), quoted as the profile
    dumper quotes it: plain where YAML 1.1 and 1.2 both read it back as the same value."""
    dumped = yaml.dump(
        [value], Dumper=_Dumper, default_flow_style=True, width=2**31, allow_unicode=True
    )
    return dumped.strip()[1:-1]


def _insert_entry(text: str, mapping: yaml.MappingNode, key: str, written: str) -> str:
    if mapping.flow_style:
        end = mapping.end_mark.index - 1  # the closing brace
        separator = ", " if mapping.value else ""
        return text[:end].rstrip() + f"{separator}{key}: {written}" + text[end:]
    indent = " " * mapping.value[0][0].start_mark.column
    # After the line the mapping's last value ends on. A block collection ends only where the
    # next token starts (lines further on), so its last value inside is followed instead.
    last: yaml.Node = mapping.value[-1][1]
    while isinstance(last, yaml.CollectionNode) and not last.flow_style and last.value:
        tail = last.value[-1]
        last = tail[1] if isinstance(tail, tuple) else tail
    end = last.end_mark.index
    line_end = end if text[end - 1 : end] == "\n" else text.find("\n", end) + 1
    if line_end <= 0:
        return text + f"\n{indent}{key}: {written}\n"
    return text[:line_end] + f"{indent}{key}: {written}\n" + text[line_end:]


def _without(text: str, path: tuple[str, ...], mapping: yaml.MappingNode, index: int) -> str:
    """`text` without the entry at `path` (entry `index` of `mapping`). The only entry of a
    block mapping leaves `{}` after its parent's key: a key with nothing under it would read as
    null, not as an empty mapping."""
    if mapping.flow_style or len(mapping.value) > 1 or len(path) < 2:
        return _remove_entry(text, mapping, index)
    found = _entry_at(text, path[:-1])
    assert found is not None
    owner, _, parent_index = found
    assert parent_index is not None
    colon = text.index(":", owner.value[parent_index][0].end_mark.index) + 1
    removed = _remove_entry(text, mapping, 0)
    return removed[:colon] + " {}" + removed[colon:]


def _remove_entry(text: str, mapping: yaml.MappingNode, index: int) -> str:
    key, value = mapping.value[index]
    if mapping.flow_style:
        start, end = key.start_mark.index, value.end_mark.index
        rest = text[end:]
        stripped = rest.lstrip()
        if stripped.startswith(","):
            end += len(rest) - len(stripped) + 1
            end += len(text[end:]) - len(text[end:].lstrip(" "))
        else:  # the last entry: take the comma before it
            before = text[:start].rstrip()
            if before.endswith(","):
                start = len(before) - 1
        return text[:start] + text[end:]
    line_start = text.rfind("\n", 0, key.start_mark.index) + 1
    line_end = text.find("\n", value.end_mark.index)
    line_end = len(text) if line_end < 0 else line_end + 1
    return text[:line_start] + text[line_end:]
