"""The profile reference (`docs/profile-reference.md`), generated from the profile's JSON Schema.

One source of truth: the pydantic models' field descriptions, defaults and bounds. A test fails
when the committed page is stale; regenerate it with
`python -m appliance.profile_reference --write docs/profile-reference.md`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from appliance.profile import json_schema

HEADER = """\
# Profile reference

Generated from the profile schema (`profiles/profile.schema.json`) by
`python -m appliance.profile_reference --write docs/profile-reference.md`; do not edit by hand.
Every key is optional unless marked **required**. Secrets are never written in a profile: name
an environment variable (`*_env`) or a 0600 file (`*_file`).
"""


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        for option in node.get("anyOf", []):
            if "$ref" in option:
                return _resolve(schema, option)
        return node
    resolved: dict[str, Any] = schema["$defs"][ref.rsplit("/", 1)[-1]]
    return resolved


def _type(schema: dict[str, Any], node: dict[str, Any]) -> str:
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " | ".join(f"`{value}`" for value in node["enum"])
    if "anyOf" in node:
        kinds = [_type(schema, option) for option in node["anyOf"]]
        return " or ".join(kind for kind in kinds if kind != "null") or "null"
    if "$ref" in node:
        target = _resolve(schema, node)
        return _type(schema, target) if "enum" in target else "mapping"  # a vocabulary enum
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema, node.get('items', {}))}"
    return str(kind)


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for key, sign in (
        ("exclusiveMinimum", ">"),
        ("minimum", "≥"),
        ("exclusiveMaximum", "<"),
        ("maximum", "≤"),
    ):
        for option in [node, *node.get("anyOf", [])]:
            if key in option:
                parts.append(f"{sign} {option[key]}")
    return ", ".join(dict.fromkeys(parts))


def _rows(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> list[str]:
    rows: list[str] = []
    required = set(node.get("required", []))
    for name, field in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        target = _resolve(schema, field)
        default = field.get("default")
        cells = [
            f"`{path}`" + (" **required**" if name in required else ""),
            _type(schema, field),
            # A section's default is its keys' defaults, listed on their own rows.
            "" if default is None or isinstance(default, dict) else f"`{json.dumps(default)}`",
            _bounds(field),
            " ".join(str(field.get("description", target.get("description", ""))).split()),
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        if "properties" in target:
            rows.extend(_rows(schema, target, f"{path}."))
        elif field.get("type") == "array" and "$ref" in field.get("items", {}):
            rows.extend(_rows(schema, _resolve(schema, field["items"]), f"{path}[]."))
    return rows


def reference() -> str:
    """The whole Markdown page."""
    schema = json_schema()
    table = ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    return HEADER + "\n" + "\n".join([*table, *_rows(schema, schema, "")]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m appliance.profile_reference")
    parser.add_argument("--write", type=Path, metavar="PATH", help="write the page here")
    args = parser.parse_args()
    text = reference()
    if args.write is None:
        print(text, end="")
    else:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
