"""An air-gap bundle on real engines (#20): created on the private engine from the engine
doubles' image and a tiny model, loaded into a *fresh* engine (a second private dockerd that has
never seen the image and reaches no registry) and a fresh models dir, applied, and answered
through the gateway. Tampered, truncated and mistargeted bundles are refused by the CLI with one
line naming what is wrong, and leave the fresh engine, models dir and profiles dir untouched."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from appliance.errors import ExitCode
from appliance.hardware import detect_box
from appliance.profile import load_profile
from appliance.runtime.apply import apply_profile
from appliance.runtime.containers import down
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
from appliance.weights import import_weights, list_weights
from tests.doubles import EngineDoubleImages, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.gateway_process import create_key, running_gateway
from tests.unit.test_bundle_create_load import tiny_model

pytestmark = pytest.mark.docker

APPLIANCE = str(Path(sys.executable).parent / "appliance")
REPO = "acme/tiny-chat"
NO_GPU = SpecOptions(gpu_requests=False)

PROFILE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata: {{name: bundled}}
spec:
  model: {{repo: {repo}, quantization: bf16, served_model_name: tiny}}
  engine: {{max_model_len: 2048, max_num_seqs: 4}}
  embeddings: {{enabled: false}}
  images: {{vllm: '{image}'}}
  ports: {{vllm: {vllm}, tei: {tei}, gateway: {gateway}}}
  gateway: {{host: 127.0.0.1}}
  storage: {{models_dir: {models}, state_dir: {state}}}
"""


@pytest.fixture(scope="module")
def fresh_engine() -> Iterator[PrivateDockerd]:
    """A second private engine with no images at all: the offline box's."""
    root = Path(tempfile.mkdtemp(prefix="appliance-dockerd-bundle-", dir="/tmp"))
    daemon = PrivateDockerd(root)
    try:
        daemon.start()
        yield daemon
        client = daemon.client()
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        finally:
            client.close()
    finally:
        daemon.stop()
        subprocess.run(["umount", str(root / "data")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


Run = Callable[..., subprocess.CompletedProcess[str]]


def runner(base_url: str, home: Path) -> Run:
    def appliance(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": base_url, "HOME": str(home)}
        return subprocess.run(
            [APPLIANCE, *args], capture_output=True, text=True, check=False, env=env, timeout=300
        )

    return appliance


@pytest.fixture(scope="module")
def made(
    docker_engine: PrivateDockerd,
    engine_doubles: EngineDoubleImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str, str]:
    """(bundle, its sha256, the image it carries), made with `appliance bundle create`."""
    root = tmp_path_factory.mktemp("bundle-src")
    models = root / "models"
    import_weights(tiny_model(root / "tiny"), REPO, "main", models_dir=models)
    image = engine_doubles.vllm["ok"]
    profile = root / "bundled.yaml"
    profile.write_text(
        PROFILE.format(
            repo=REPO,
            image=image,
            vllm=free_port(),
            tei=free_port(),
            gateway=free_port(),
            models=models,
            state=root / "state",
        )
    )
    bundle = root / "bundle.tar"
    run = runner(docker_engine.base_url, root)
    made = run(
        "bundle", "create", str(profile), "-o", str(bundle), "--simulate", "rtx4090", "--no-wheels"
    )
    assert made.returncode == ExitCode.OK, made.stderr
    digest = next(line.split()[1] for line in made.stdout.splitlines() if line.startswith("sha256"))
    return bundle, digest, image


def member_span(bundle: Path, prefix: str) -> tuple[int, int]:
    with tarfile.open(bundle) as tar:
        info = next(i for i in tar.getmembers() if i.name.startswith(prefix))
        return info.offset_data, info.size


def layer_offset(bundle: Path) -> int:
    """An offset inside the largest layer of the image member's `docker save` archive."""
    start, size = member_span(bundle, "images/")
    with bundle.open("rb") as f:
        f.seek(start)
        archive = f.read(size)
    with tarfile.open(fileobj=io.BytesIO(archive)) as inner:
        layer = max(inner.getmembers(), key=lambda i: i.size)
        assert layer.size > 1 << 20, layer.name
        return start + layer.offset_data + layer.size // 2


def flipped(bundle: Path, offset: int, into: Path) -> Path:
    data = bytearray(bundle.read_bytes())
    data[offset] ^= 0x01
    into.write_bytes(bytes(data))
    return into


def manifest_changed(bundle: Path, into: Path) -> Path:
    data = bytearray(bundle.read_bytes())
    at = data.rindex(b'"sha256": "') + len('"sha256": "')
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    into.write_bytes(bytes(data))
    return into


def truncated(bundle: Path, into: Path) -> Path:
    data = bundle.read_bytes()
    into.write_bytes(data[: len(data) * 2 // 3])
    return into


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("layer", r"bundle member images/\S+ was altered"),
        ("weights", r"bundle member weights/acme/tiny-chat/\S+model.safetensors was altered"),
        ("manifest", r"manifest was changed"),
        ("truncated", r"bundle member \S+ is cut short .*truncated bundle"),
        (
            "other-box",
            r"made for nvidia compute capability 8\.9.*this box is nvidia compute capability 9\.0",
        ),
    ],
)
def test_a_bad_bundle_is_refused_and_nothing_is_installed(
    made: tuple[Path, str, str],
    fresh_engine: PrivateDockerd,
    tmp_path: Path,
    case: str,
    message: str,
) -> None:
    simulate = "h100" if case == "other-box" else "rtx4090"
    bundle, _, image = made
    bad = tmp_path / "bad.tar"
    if case == "layer":
        flipped(bundle, layer_offset(bundle), bad)
    elif case == "weights":
        with tarfile.open(bundle) as tar:
            start, size = next(
                (i.offset_data, i.size) for i in tar if i.name.endswith("model.safetensors")
            )
        flipped(bundle, start + size - 10, bad)
    elif case == "manifest":
        manifest_changed(bundle, bad)
    elif case == "truncated":
        truncated(bundle, bad)
    else:
        shutil.copy(bundle, bad)
    models, profiles = tmp_path / "models", tmp_path / "profiles"
    run = runner(fresh_engine.base_url, tmp_path)
    loaded = run(
        "bundle", "load", str(bad), "--models-dir", str(models),
        "--profiles-dir", str(profiles), "--simulate", simulate,
    )  # fmt: skip
    assert loaded.returncode in (ExitCode.REFUSED, ExitCode.BAD_INPUT), loaded.stderr
    assert "Traceback" not in loaded.stderr
    [error] = [line for line in loaded.stderr.splitlines() if line.startswith("error:")]
    assert re.search(message, error), loaded.stderr
    engine = DockerEngine(fresh_engine.base_url)
    try:
        assert engine.image_identity(image) is None
    finally:
        engine.close()
    assert list_weights(models) == []
    assert not profiles.exists() or not any(profiles.iterdir())


def test_round_trip_to_a_fresh_engine_then_apply_and_the_gateway_answers(
    made: tuple[Path, str, str], fresh_engine: PrivateDockerd, tmp_path: Path
) -> None:
    bundle, digest, image = made
    models, profiles = tmp_path / "models", tmp_path / "profiles"
    run = runner(fresh_engine.base_url, tmp_path)
    inspect = run("bundle", "inspect", str(bundle))
    assert inspect.returncode == ExitCode.OK, inspect.stderr
    assert "image" in inspect.stdout
    assert "weights" in inspect.stdout

    loaded = run(
        "bundle", "load", str(bundle), "--expect-sha256", digest, "--models-dir", str(models),
        "--profiles-dir", str(profiles), "--simulate", "rtx4090", "--json",
    )  # fmt: skip
    assert loaded.returncode == ExitCode.OK, loaded.stderr
    profile_path = profiles / "bundled.yaml"
    assert profile_path.is_file()
    [installed] = list_weights(models)
    assert installed.repo == REPO

    again = run(
        "bundle", "load", str(bundle), "--models-dir", str(models),
        "--profiles-dir", str(profiles), "--simulate", "rtx4090", "--json",
    )  # fmt: skip
    assert again.returncode == ExitCode.OK, again.stderr
    assert '"images_present": [\n    "' + image in again.stdout

    profile = load_profile(profile_path)
    assert profile.spec.storage.models_dir == models
    box = detect_box(simulate="rtx4090", models_dir=models)
    engine = DockerEngine(fresh_engine.base_url)
    try:
        result = apply_profile(
            profile, box, engine, options=NO_GPU, deadlines_s={"vllm": 120.0, "tei": 120.0}
        )
        assert result.applied
        key = create_key(profile_path)
        base = f"http://127.0.0.1:{profile.spec.ports.gateway}"
        with running_gateway(profile_path, base):
            reply = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
    finally:
        down(engine)
        engine.close()
