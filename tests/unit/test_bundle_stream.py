import hashlib
from pathlib import Path

import pytest

from appliance.bundle.manifest import Target
from appliance.bundle.stream import BundleWriter, read_manifest, verify_into
from appliance.errors import RefusedError

T = Target(driver="nvidia", compute_capability="8.9", python="3.12", platform="x")


def make(tmp_path: Path) -> Path:
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 5000)
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"w" * 3000)
    out = tmp_path / "b.tar"
    with out.open("wb") as f:
        bw = BundleWriter(f)
        bw.add_file("images/a.tar", "image", a, "a:1")
        bw.add_file("weights/m/w.safetensors", "weights", w, "m@rev")
        m = bw.finish("0.1.0", T)
    assert m.members[0].sha256 == hashlib.sha256(b"x" * 5000).hexdigest()
    return out


def test_round_trip_and_restart(tmp_path: Path) -> None:
    b = make(tmp_path)
    assert len(read_manifest(b).members) == 2
    st = tmp_path / "st"
    seen: list[int] = []
    verify_into(b, st, seen.append)
    assert (st / "images/a.tar").read_bytes() == b"x" * 5000
    assert sum(seen) == 8000
    again: list[int] = []
    verify_into(b, st, again.append)
    assert again == []  # verified members are not redone


def flip(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[data.index(needle) + 10] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("needle", "name"), [(b"x" * 100, "images/a.tar"), (b"w" * 100, "weights/m")]
)
def test_flipped_byte_names_member_and_leaves_nothing(
    tmp_path: Path, needle: bytes, name: str
) -> None:
    b = make(tmp_path)
    flip(b, needle)
    st = tmp_path / "st"
    with pytest.raises(RefusedError, match=name):
        verify_into(b, st)
    assert not list(st.rglob("*.part"))


def test_truncated_refused(tmp_path: Path) -> None:
    b = make(tmp_path)
    b.write_bytes(b.read_bytes()[:6000])
    with pytest.raises(RefusedError):
        verify_into(b, tmp_path / "st")


def test_changed_manifest_refused(tmp_path: Path) -> None:
    b = make(tmp_path)
    flip(b, b'"sha256": "')
    with pytest.raises(Exception, match="manifest"):
        verify_into(b, tmp_path / "st")


def test_cli_inspect_lists_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import run as main

    b = make(tmp_path)
    assert main(["bundle", "inspect", str(b)]) == 0
    out = capsys.readouterr().out
    assert "images/a.tar" in out
    assert "compute capability 8.9" in out
    assert "digest" in out


def test_cli_inspect_bad_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli import run as main

    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    assert main(["bundle", "inspect", str(junk)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "junk.tar" in err
