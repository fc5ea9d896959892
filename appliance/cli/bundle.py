"""`appliance bundle …`: air-gap bundles (issue #20); the commands live in `appliance.cli_bundle`
until that work lands here."""

from __future__ import annotations

from appliance.cli.base import Commands
from appliance.cli_bundle import add_bundle_parser


def register(commands: Commands) -> None:
    add_bundle_parser(commands)
