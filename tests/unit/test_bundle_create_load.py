"""bundle create → load with an in-memory stand-in for the Docker adapter: what goes in, what a
tampered, truncated or mistargeted bundle does (refused, nothing installed), and restarts.

The real engine round trip is tests/integration/test_bundle_docker.py."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from appliance.bundle.create import create_bundle
from appliance.bundle.load import load_bundle
from appliance.bundle.manifest import Target
from appliance.bundle.stream import read_manifest
from appliance.errors import ApplianceError, BadInputError, EnvironmentNotReadyError, RefusedError
from appliance.hardware import detect_box
from appliance.profile import load_profile
from appliance.weights import import_weights, list_weights

IMAGE = "appliance-test/vllm-double:ok"
REPO = "acme/tiny-chat"


class FakeEngine:
    """The four image calls bundle create/load make, over a dict of image archives."""

    def __init__(self, images: dict[str, bytes] | None = None) -> None:
        self.images = dict(images or {})
        self.pulled: list[str] = []
        self.loads = 0

    def image_identity(self, image: str) -> tuple[str, int] | None:
        data = self.images.get(image)
        if data is None:
            return None
        return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)

    def pull(self, image: str, progress: object = None) -> None:
        self.pulled.append(image)
        self.images[image] = b"pulled " + image.encode() * 1000

    def save_image(self, image: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        data = self.images[image]
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    def load_images(self, archive: BinaryIO) -> list[str]:
        self.loads += 1
        data = archive.read()
        self.images[IMAGE] = data  # every test bundle carries the one image
        return [IMAGE]

    def remove_image(self, image: str) -> None:
        self.images.pop(image, None)


def tiny_model(where: Path) -> Path:
    """A config.json and a valid one-tensor safetensors file."""
    where.mkdir(parents=True)
    (where / "config.json").write_text('{"architectures": ["TinyForCausalLM"]}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}).encode()
    body = struct.pack("<Q", len(header)) + header + bytes(range(256))
    (where / "model.safetensors").write_bytes(body)
    return where


PROFILE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata: {{name: tiny}}
spec:
  model: {{repo: {repo}, quantization: bf16, served_model_name: tiny}}
  engine: {{max_model_len: 2048, max_num_seqs: 4}}
  embeddings: {{enabled: false}}
  images: {{vllm: '{image}'}}
  storage: {{models_dir: {models}, state_dir: {state}}}
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    models = tmp_path / "src-models"
    import_weights(tiny_model(tmp_path / "tiny"), REPO, "main", models_dir=models)
    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        PROFILE.format(repo=REPO, image=IMAGE, models=models, state=tmp_path / "state")
    )
    return profile


def make_bundle(
    tmp_path: Path, profile: Path, simulate: str = "rtx4090"
) -> tuple[Path, FakeEngine]:
    engine = FakeEngine({IMAGE: b"archive" + b"L" * 50_000})
    out = tmp_path / "b.tar"
    box = detect_box(simulate=simulate, models_dir=tmp_path)
    create_bundle(profile, box, engine, out, wheels=None)  # type: ignore[arg-type]
    return out, engine


def load(tmp_path: Path, bundle: Path, simulate: str = "rtx4090", **kw: object):  # type: ignore[no-untyped-def]
    engine = kw.pop("engine", None) or FakeEngine()
    models_dir = kw.pop("models_dir", tmp_path / "dst-models")
    result = load_bundle(
        bundle,
        detect_box(simulate=simulate, models_dir=tmp_path),
        engine,  # type: ignore[arg-type]
        profiles_dir=tmp_path / "profiles",
        models_dir=models_dir,
        **kw,  # type: ignore[arg-type]
    )
    return result, engine


def nothing_installed(tmp_path: Path, engine: FakeEngine) -> None:
    assert engine.images == {}
    assert list_weights(tmp_path / "dst-models") == []
    assert not (tmp_path / "profiles").exists()


def test_create_then_load_installs_images_weights_and_profile(tmp_path: Path, source: Path) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    manifest = read_manifest(bundle)
    kinds = [m.kind for m in manifest.members]
    assert kinds == ["image", "weights", "weights", "profile"]
    assert manifest.target.driver == "nvidia"
    assert manifest.target.compute_capability == "8.9"

    result, engine = load(tmp_path, bundle, expect_sha256=manifest.entries_sha256)
    assert result.images_loaded == [IMAGE]
    assert result.weights_imported == [f"{REPO}@main"]
    [installed] = list_weights(tmp_path / "dst-models")
    assert installed.repo == REPO
    assert (installed.path / "model.safetensors").read_bytes().endswith(bytes(range(256)))
    [original] = list_weights(tmp_path / "src-models")
    assert (installed.sha, installed.files) == (original.sha, original.files)
    text = result.profile_path.read_text()
    assert str(tmp_path / "dst-models") in text
    assert not (tmp_path / "dst-models" / ".staging").exists()

    again, _ = load(tmp_path, bundle, engine=engine)  # a second load redoes nothing
    assert again.images_present == [IMAGE]
    assert again.weights_present == [f"{REPO}@main"]
    assert engine.loads == 1


def test_an_absent_image_is_pulled_and_no_token_goes_in(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "S" * 34)
    engine = FakeEngine()
    out = tmp_path / "b.tar"
    box = detect_box(simulate="rtx4090", models_dir=tmp_path)
    create_bundle(source, box, engine, out, wheels=None)  # type: ignore[arg-type]
    assert engine.pulled == [IMAGE]
    assert b"hf_SSSS" not in out.read_bytes()


def flip_in(bundle: Path, needle: bytes, offset: int = 10) -> None:
    data = bytearray(bundle.read_bytes())
    data[data.index(needle) + offset] ^= 1
    bundle.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("needle", "member"),
    [
        (b"L" * 100, "images/"),
        (bytes(range(200)), "weights/acme/tiny-chat/"),
        (b"max_num_seqs", "profile/tiny.yaml"),
    ],
)
def test_a_changed_byte_is_refused_naming_the_member(
    tmp_path: Path, source: Path, needle: bytes, member: str
) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    flip_in(bundle, needle)
    engine = FakeEngine()
    with pytest.raises(RefusedError, match=member):
        load(tmp_path, bundle, engine=engine)
    nothing_installed(tmp_path, engine)


def test_a_changed_manifest_is_refused(tmp_path: Path, source: Path) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    flip_in(bundle, b'"size": ', 9)  # a member's size in the manifest
    engine = FakeEngine()
    with pytest.raises(ApplianceError, match="manifest"):
        load(tmp_path, bundle, engine=engine)
    nothing_installed(tmp_path, engine)


def test_another_digest_than_expected_is_refused(tmp_path: Path, source: Path) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    engine = FakeEngine()
    with pytest.raises(RefusedError, match="expected"):
        load(tmp_path, bundle, engine=engine, expect_sha256="0" * 64)
    nothing_installed(tmp_path, engine)


def test_a_truncated_bundle_is_refused(tmp_path: Path, source: Path) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    engine = FakeEngine()
    with pytest.raises(RefusedError, match="truncated"):
        load(tmp_path, bundle, engine=engine)
    nothing_installed(tmp_path, engine)


def test_a_bundle_for_another_compute_capability_is_refused(tmp_path: Path, source: Path) -> None:
    bundle, _ = make_bundle(tmp_path, source, simulate="h100")
    engine = FakeEngine()
    with pytest.raises(RefusedError, match=r"compute capability 9\.0.*8\.9"):
        load(tmp_path, bundle, simulate="rtx4090", engine=engine)
    nothing_installed(tmp_path, engine)


def test_an_interrupted_load_restarts_without_reverifying(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    engine = FakeEngine()

    def fail(_archive: BinaryIO) -> list[str]:
        raise EnvironmentNotReadyError("Docker went away")

    monkeypatch.setattr(engine, "load_images", fail)
    with pytest.raises(EnvironmentNotReadyError):
        load(tmp_path, bundle, engine=engine)
    assert not (tmp_path / "profiles").exists()  # the profile goes in last, after all else
    # Weights are imported while Docker loads: complete (manifest written last) or absent.
    assert all(w.repo == REPO for w in list_weights(tmp_path / "dst-models"))
    monkeypatch.undo()
    seen: list[int] = []
    result, _ = load(tmp_path, bundle, engine=engine, progress=seen.append)
    assert sum(seen) == 0  # every member was verified by the first run
    assert result.images_loaded == [IMAGE]
    assert result.weights_present + result.weights_imported == [f"{REPO}@main"]
    assert result.profile_path.is_file()


def test_missing_weights_refuse_create(tmp_path: Path) -> None:
    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        PROFILE.format(repo=REPO, image=IMAGE, models=tmp_path / "none", state=tmp_path / "s")
    )
    with pytest.raises(EnvironmentNotReadyError, match="weights not complete"):
        make_bundle(tmp_path, profile)
    assert not (tmp_path / "b.tar").exists()
    assert not (tmp_path / "b.tar.part").exists()


def test_too_little_disk_refuses_create_before_writing(tmp_path: Path, source: Path) -> None:
    engine = FakeEngine({IMAGE: b"x"})
    box = detect_box(simulate="rtx4090", models_dir=tmp_path)
    with pytest.raises(EnvironmentNotReadyError, match="not enough free disk"):
        create_bundle(
            source, box, engine, tmp_path / "b.tar", wheels=None, free_bytes=lambda _p: 10
        )  # type: ignore[arg-type]
    assert not (tmp_path / "b.tar.part").exists()


def test_a_linked_weights_file_is_never_bundled(tmp_path: Path, source: Path) -> None:
    [installed] = list_weights(tmp_path / "src-models")
    target = installed.path / "model.safetensors"
    secret = tmp_path / "elsewhere.safetensors"
    target.replace(secret)
    target.symlink_to(secret)
    with pytest.raises(RefusedError, match="link"):
        make_bundle(tmp_path, source)


def test_wheels_go_in_as_wheel_members(tmp_path: Path, source: Path) -> None:
    wheel = tmp_path / "llm_appliance-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK wheel")
    engine = FakeEngine({IMAGE: b"a"})
    box = detect_box(simulate="rtx4090", models_dir=tmp_path)
    manifest = create_bundle(source, box, engine, tmp_path / "b.tar", wheels=[wheel])  # type: ignore[arg-type]
    [member] = [m for m in manifest.members if m.kind == "wheel"]
    assert member.path == "wheels/llm_appliance-0.1.0-py3-none-any.whl"
    assert member.version == "llm_appliance 0.1.0"


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadInputError):
        load_bundle(
            tmp_path / "nope.tar",
            detect_box(simulate="rtx4090"),
            FakeEngine(),
            profiles_dir=tmp_path,
        )  # type: ignore[arg-type]


def test_weights_changed_after_their_import_are_refused_at_load(
    tmp_path: Path, source: Path
) -> None:
    """create trusts the weights manifest's digests (no second hash); load checks the bytes."""
    [installed] = list_weights(tmp_path / "src-models")
    weights = installed.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    bundle, _ = make_bundle(tmp_path, source)
    engine = FakeEngine()
    with pytest.raises(RefusedError, match=r"weights/acme/tiny-chat/\w+/model.safetensors"):
        load(tmp_path, bundle, engine=engine)
    nothing_installed(tmp_path, engine)


def test_a_wheel_directory_must_hold_wheels(tmp_path: Path) -> None:
    from appliance.bundle.create import build_wheels, wheels_in

    with pytest.raises(BadInputError, match=r"no \.whl files"):
        wheels_in(tmp_path)
    with pytest.raises(BadInputError, match="not a directory"):
        wheels_in(tmp_path / "absent")
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"PK")
    assert [p.name for p in wheels_in(tmp_path)] == ["a-1.0-py3-none-any.whl"]
    other = Target(driver="cpu", compute_capability="", python="2.7", platform="x")
    with pytest.raises(BadInputError, match=r"Python 2\.7"):
        build_wheels(tmp_path, other)


def test_a_bundle_of_images_this_driver_cannot_run_is_refused(tmp_path: Path) -> None:
    """Same cards (H200, 9.0), older driver: apply's image choice differs, so load refuses."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "detect"
    models = tmp_path / "src-models"
    import_weights(tiny_model(tmp_path / "tiny"), REPO, "main", models_dir=models)
    profile = tmp_path / "tiny.yaml"
    text = PROFILE.format(repo=REPO, image="", models=models, state=tmp_path / "state")
    profile.write_text(text.replace("  images: {vllm: ''}\n", ""))
    engine = FakeEngine()
    out = tmp_path / "b.tar"
    create_bundle(
        profile, detect_box(simulate=str(fixtures / "h200.json")), engine, out, wheels=None
    )  # type: ignore[arg-type]
    [image] = [
        m.version.rpartition("@")[0] for m in read_manifest(out).members if m.kind == "image"
    ]
    fresh = FakeEngine()
    with pytest.raises(RefusedError, match=rf"runs \S+-cu129 .* has {re.escape(image)}"):
        load(tmp_path, out, simulate=str(fixtures / "h200-driver-575.json"), engine=fresh)
    nothing_installed(tmp_path, fresh)


def test_a_different_profile_of_the_same_name_is_not_overwritten(
    tmp_path: Path, source: Path
) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    mine = tmp_path / "profiles" / "tiny.yaml"
    mine.parent.mkdir()
    mine.write_text("# my own edits\n")
    engine = FakeEngine()
    with pytest.raises(RefusedError, match="differs from the bundle's profile"):
        load(tmp_path, bundle, engine=engine)
    assert mine.read_text() == "# my own edits\n"
    assert engine.images == {}
    assert list_weights(tmp_path / "dst-models") == []


def test_the_installed_profile_keeps_its_comments(tmp_path: Path) -> None:
    """`--models-dir` changes one value; the operator's comments and layout stay as written."""
    models = tmp_path / "src-models"
    import_weights(tiny_model(tmp_path / "tiny"), REPO, "main", models_dir=models)
    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        "# the team's box: keep max_num_seqs low, see the runbook\n"
        + PROFILE.format(repo=REPO, image=IMAGE, models=models, state=tmp_path / "state")
        .replace(
            f"  storage: {{models_dir: {models}, state_dir: {tmp_path / 'state'}}}\n",
            f"  storage:\n    models_dir: {models}  # the fast disk\n"
            f"    state_dir: {tmp_path / 'state'}\n",
        )
        .replace("max_num_seqs: 4}", "max_num_seqs: 4}  # measured by bench")
    )
    bundle, _ = make_bundle(tmp_path, profile)
    result, _ = load(tmp_path, bundle)
    text = result.profile_path.read_text()
    assert text.startswith("# the team's box: keep max_num_seqs low, see the runbook\n")
    assert "# measured by bench" in text
    assert "# the fast disk" in text
    assert load_profile(result.profile_path).spec.storage.models_dir == tmp_path / "dst-models"
    assert text.replace(str(tmp_path / "dst-models"), str(models)).replace('"', "") == (
        profile.read_text()
    )


def test_a_profile_loaded_where_it_was_made_is_installed_as_written(
    tmp_path: Path, source: Path
) -> None:
    bundle, _ = make_bundle(tmp_path, source)
    result, _ = load(tmp_path, bundle, models_dir=None)
    assert result.profile_path.read_bytes() == source.read_bytes()


def test_images_loaded_before_a_weights_member_fails_are_taken_out_again(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker loads the images while the weights are still being checked; a bad weights byte
    found after that leaves Docker as it was."""
    import threading

    from appliance.bundle import stream

    bundle, _ = make_bundle(tmp_path, source)
    flip_in(bundle, bytes(range(200)))
    loaded = threading.Event()

    class Engine(FakeEngine):
        def load_images(self, archive: BinaryIO) -> list[str]:
            names = super().load_images(archive)
            loaded.set()
            return names

    check = stream._verify_member

    def weights_after_the_images(raw, info, member, target, **kw):  # type: ignore[no-untyped-def]
        if member.kind == "weights":
            assert loaded.wait(timeout=30)  # a bound against hanging
        check(raw, info, member, target, **kw)

    monkeypatch.setattr(stream, "_verify_member", weights_after_the_images)
    engine = Engine()
    with pytest.raises(RefusedError, match="weights/acme/tiny-chat/"):
        load(tmp_path, bundle, engine=engine)
    assert engine.loads == 1
    nothing_installed(tmp_path, engine)
