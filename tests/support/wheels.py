"""The wheels the gateway image installs, made offline from this checkout and this virtualenv.

The Containerfile installs `dist/*.whl` with `pip install --no-index` (an operator makes them
with `pip wheel . -w dist`). No index is reachable from the tests, so they are made as `bundle
create` makes them for an air-gapped box (`appliance.bundle.wheels`): the appliance's wheel
built from the checkout with the pinned hatchling of the dev extra, each runtime dependency
repacked from the files this virtualenv installed for it.
"""

from __future__ import annotations

from pathlib import Path

from appliance.bundle.wheels import project_wheels, runtime_distributions


def gateway_wheels(dest: Path) -> list[Path]:
    """Everything `pip install --no-index --find-links dest llm-appliance` needs."""
    return project_wheels(dest)


__all__ = ["gateway_wheels", "runtime_distributions"]
