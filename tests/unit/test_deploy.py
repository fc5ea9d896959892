"""Deploy checks what weights cannot fix before it downloads anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import EnvironmentNotReadyError, RefusedError
from appliance.hardware import detect_box
from appliance.operations.deploy import deploy_profile
from appliance.profile import load_profile
from appliance.runtime.apply import check_box_can_run

ROOT = Path(__file__).resolve().parents[2]


class NoEngine:
    """Deploy must refuse before it talks to Docker or the Hub."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"deploy reached the engine ({name}) before refusing")


def test_no_gpu_for_containers_is_refused_before_any_download(tmp_path: Path) -> None:
    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    box = detect_box(simulate="rtx4090", models_dir=tmp_path)
    without_toolkit = box.model_copy(
        update={"docker": box.docker.model_copy(update={"nvidia_runtime": False})}
    )
    downloads: list[object] = []
    with pytest.raises(EnvironmentNotReadyError, match="cannot give containers a GPU"):
        deploy_profile(
            profile,
            without_toolkit,
            NoEngine(),  # type: ignore[arg-type]
            weights_progress=downloads.append,
        )
    assert downloads == []


def test_a_profile_asking_for_more_context_than_the_model_holds_is_refused(
    tmp_path: Path,
) -> None:
    # Qwen2.5-7B-Instruct-AWQ: max_position_embeddings 32768, no rope_scaling in config.json.
    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    engine = profile.spec.engine.model_copy(update={"max_model_len": 65536})
    too_long = profile.model_copy(
        update={"spec": profile.spec.model_copy(update={"engine": engine})}
    )
    box = detect_box(simulate="rtx4090", models_dir=tmp_path)
    with pytest.raises(RefusedError, match=r"vLLM would refuse this profile.*32768 tokens"):
        check_box_can_run(too_long, box)
