"""Fixtures the gateway's integration modules share (test_gateway*.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.gateway.keys import create_key
from tests.integration.test_gateway import Engine, engine


@pytest.fixture(scope="module")
def tei() -> Iterator[Engine]:
    with engine("tei", "--model-id", "bge", env={"DOUBLE_DIMENSIONS": "8"}) as double:
        yield double


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def api_key(state: Path) -> str:
    return create_key(state / "keys.json", "team").key
