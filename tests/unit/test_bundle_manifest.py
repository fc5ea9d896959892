import dataclasses
import json

import pytest

from appliance.bundle.manifest import (
    Manifest,
    Member,
    Target,
    check_expected,
    check_member,
    check_target,
    parse_manifest,
)
from appliance.errors import BadInputError, RefusedError

T = Target(
    driver="nvidia", compute_capability="8.9", python="3.12", platform="manylinux_2_28_x86_64"
)
M = Member(path="images/vllm.tar", kind="image", size=3, sha256="a" * 64, version="vllm:1")


def manifest() -> Manifest:
    return Manifest(appliance_version="0.1.0", target=T, members=(M,))


def test_round_trip() -> None:
    m = manifest()
    assert parse_manifest(m.to_json()) == m


def test_changed_entry_is_detected() -> None:
    data = json.loads(manifest().to_json())
    data["members"][0]["sha256"] = "b" * 64
    with pytest.raises(BadInputError, match="changed"):
        parse_manifest(json.dumps(data))


def test_rewritten_manifest_caught_by_expected_digest() -> None:
    forged = dataclasses.replace(manifest(), members=(dataclasses.replace(M, sha256="b" * 64),))
    parsed = parse_manifest(forged.to_json())
    with pytest.raises(RefusedError, match="expected"):
        check_expected(parsed, manifest().entries_sha256)
    check_expected(manifest(), manifest().entries_sha256)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../b", "MANIFEST.json"])
def test_unsafe_paths_refused(path: str) -> None:
    m = dataclasses.replace(manifest(), members=(dataclasses.replace(M, path=path),))
    with pytest.raises(BadInputError, match="unsafe"):
        parse_manifest(m.to_json())


def test_garbage_is_one_line() -> None:
    with pytest.raises(BadInputError, match="not valid"):
        parse_manifest("{")


def test_member_checks_name_the_member() -> None:
    check_member(M, 3, "a" * 64)
    with pytest.raises(RefusedError, match=r"images/vllm\.tar is truncated"):
        check_member(M, 2, "a" * 64)
    with pytest.raises(RefusedError, match=r"images/vllm\.tar was altered"):
        check_member(M, 3, "c" * 64)


def test_other_compute_capability_refused_naming_both() -> None:
    check_target(T, T)
    with pytest.raises(RefusedError, match=r"8\.9.*8\.0"):
        check_target(T, dataclasses.replace(T, compute_capability="8.0"))
