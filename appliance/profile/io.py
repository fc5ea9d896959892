"""Reading and writing profiles: `parse_profile`, `load_profile`, `dump_profile`, and the
JSON Schema the profile files are checked against.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import (
    ValidationError,
)

from appliance.profile.explain import _clean_loc, _covered, _message_for, _position
from appliance.profile.problems import ProfileError, ProfileProblem, _dotted, _show
from appliance.profile.schema import Profile
from appliance.profile.values import MAX_PROFILE_BYTES
from appliance.profile.yaml_text import _Builder, _compose, _Dumper, _FatalError

# ---------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------


def parse_profile(text: str, filename: str) -> Profile:
    """Validate profile text; `filename` is only used in messages.

    Raises `ProfileError` with every problem found: YAML errors stop at the first (nothing after
    them can be trusted), everything else is collected.
    """
    if len(text) > MAX_PROFILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_PROFILE_BYTES
    ):
        raise ProfileError([_too_large(filename)])
    text = text.removeprefix("\ufeff")
    try:
        root = _compose(text, filename)
        builder = _Builder(filename)
        builder.positions[()] = (root.start_mark.line + 1, root.start_mark.column + 1)
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else f"{_show(root.value)}"
            raise _FatalError(
                [
                    ProfileProblem(
                        filename,
                        root.start_mark.line + 1,
                        None,
                        "",
                        f"a profile is a mapping (apiVersion:, kind:, metadata:, spec:), "
                        f"but this file holds {kind}",
                        "see profiles/ for complete examples",
                    )
                ]
            )
        data = builder.build(root, ())
    except _FatalError as exc:
        raise ProfileError(exc.problems) from None
    except RecursionError:
        raise ProfileError(
            [
                ProfileProblem(
                    filename, None, None, "", "nested too deep to read", "check the brackets"
                )
            ]
        ) from None

    problems = list(builder.problems)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            for path, message, hint in _message_for(error, _clean_loc(error["loc"])):
                if _covered(path, builder.secret_paths | builder.reported):
                    continue  # already reported as a secret; never echo it
                position = _position(builder.positions, path)
                problems.append(
                    ProfileProblem(
                        filename,
                        position[0] if position else None,
                        position[1] if position else None,
                        _dotted(path),
                        message,
                        hint,
                    )
                )
        raise ProfileError(problems) from None
    if problems:
        raise ProfileError(problems)
    return profile


def _too_large(filename: str) -> ProfileProblem:
    return ProfileProblem(
        filename,
        None,
        None,
        "",
        f"larger than {MAX_PROFILE_BYTES // 1024} KiB; a profile is a page of YAML",
        "check that this is the profile you meant",
    )


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file.

    The size is checked before reading, and at most one byte past the limit is ever read, so a
    huge or endless file (a FIFO, /dev/zero) is refused without loading it.
    """
    name = str(path)

    def whole_file(message: str, hint: str) -> ProfileError:
        return ProfileError([ProfileProblem(name, None, None, "", message, hint)])

    try:
        if path.is_dir():
            raise whole_file(
                "is a directory, not a profile file", "give a file, e.g. profiles/rtx4090-chat.yaml"
            )
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ProfileError([_too_large(name)])
        with path.open("rb") as handle:
            raw = handle.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise whole_file(
            "no such file", "check the path; ready-made profiles are in profiles/"
        ) from None
    except PermissionError:
        raise whole_file(
            "cannot be read: permission denied",
            "run as a user who can read it, or fix its permissions",
        ) from None
    except OSError as exc:
        raise whole_file(
            f"cannot be read: {exc.strerror or exc}", "check the path and the disk"
        ) from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError([_too_large(name)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ProfileError(
            [
                ProfileProblem(
                    name,
                    line,
                    column,
                    "",
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})",
                    "save the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
                )
            ]
        ) from None
    return parse_profile(text, name)


def dump_profile(profile: Profile, comment: str | None = None) -> str:
    """The profile as YAML: only what differs from the defaults, keys in schema order.

    `comment`, if given, is written first as `#` lines (e.g. why `recommend` chose these numbers).
    The output always parses back to an equal profile.
    """
    data = profile.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data["apiVersion"] = profile.api_version  # always written, whatever the defaults
    data["kind"] = profile.kind
    ordered = {k: data[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in data}
    body = yaml.dump(
        ordered,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    if comment:
        header = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
        return header + body
    return body


def json_schema() -> dict[str, object]:
    """The JSON Schema of a profile file, generated from the models (for editors and docs)."""
    schema: dict[str, object] = Profile.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llm-appliance profile"
    return schema


def schema_text() -> str:
    """`json_schema()` as committed in profiles/profile.schema.json: pretty, sorted, newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
