"""`python -m appliance.profile --write-schema`: regenerate profiles/profile.schema.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from appliance.profile.io import schema_text


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m appliance.profile --write-schema [PATH]`: regenerate the committed schema."""
    import argparse

    default = Path(__file__).resolve().parents[2] / "profiles" / "profile.schema.json"
    parser = argparse.ArgumentParser(prog="python -m appliance.profile")
    parser.add_argument(
        "--write-schema",
        nargs="?",
        const=str(default),
        metavar="PATH",
        help=f"write the profile JSON Schema (default: {default})",
    )
    args = parser.parse_args(argv)
    if args.write_schema is None:
        parser.print_help()
        return 2
    Path(args.write_schema).write_text(schema_text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
