"""`estimate ORG/NAME` for a Hub repo the catalog does not know: config.json plus the safetensors
headers, read through the real huggingface_hub client (its `parse_safetensors_file_metadata` Range
reads) from a Hub double on 127.0.0.1. No tensor bytes are ever fetched.

The conftest forces `HF_HUB_OFFLINE=1` for every test; `online` turns it off where a test needs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import BadInputError, EnvironmentNotReadyError, ExitCode, RefusedError
from appliance.local_model import resolve_model
from appliance.weights import hub_model_metadata
from tests.support.hub_double import HubDouble, safetensors_bytes

APPLIANCE = str(Path(sys.executable).parent / "appliance")
SINGLE = "small-org/small-llama"
SHARDED = "small-org/small-llama-sharded"
FP8 = "small-org/small-llama-fp8"
GATED = "gated-org/small-llama"

# A small Llama made here: 2 layers, hidden 256, 4 heads (2 KV heads), vocab 1024.
CONFIG: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
SIZES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}


def _tensors(dtype: str = "BF16") -> dict[str, tuple[str, tuple[int, ...]]]:
    """The small Llama's tensors: name → (dtype, shape); norms stay F32 as many repos keep them."""
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("BF16", (1024, 256)),
        "lm_head.weight": ("BF16", (1024, 256)),
        "model.norm.weight": ("F32", (256,)),
    }
    for layer in range(2):
        p = f"model.layers.{layer}"
        tensors[f"{p}.self_attn.q_proj.weight"] = (dtype, (256, 256))
        tensors[f"{p}.self_attn.k_proj.weight"] = (dtype, (128, 256))
        tensors[f"{p}.self_attn.v_proj.weight"] = (dtype, (128, 256))
        tensors[f"{p}.self_attn.o_proj.weight"] = (dtype, (256, 256))
        tensors[f"{p}.mlp.gate_proj.weight"] = (dtype, (512, 256))
        tensors[f"{p}.mlp.up_proj.weight"] = (dtype, (512, 256))
        tensors[f"{p}.mlp.down_proj.weight"] = (dtype, (256, 512))
        tensors[f"{p}.input_layernorm.weight"] = ("F32", (256,))
    return tensors


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _file(tensors: dict[str, tuple[str, tuple[int, ...]]]) -> bytes:
    return safetensors_bytes(
        {
            name: (dtype, shape, bytes(_count(shape) * SIZES[dtype]))
            for name, (dtype, shape) in tensors.items()
        }
    )


def _expected(tensors: dict[str, tuple[str, tuple[int, ...]]]) -> tuple[int, dict[str, int]]:
    total, by_dtype = 0, {}
    for dtype, shape in tensors.values():
        total += _count(shape) * SIZES[dtype]
        by_dtype[dtype] = by_dtype.get(dtype, 0) + _count(shape)
    return total, by_dtype


def _sharded_files() -> dict[str, bytes]:
    tensors = _tensors()
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    files = {shard: _file({n: tensors[n] for n in members}) for shard, members in halves.items()}
    index = {
        "metadata": {"total_size": _expected(tensors)[0]},
        "weight_map": {n: shard for shard, members in halves.items() for n in members},
    }
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files["config.json"] = json.dumps(CONFIG).encode()
    return files


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hub_constants  # noqa: TID251 - test setup

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-login-token"))
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "llm-appliance"


def _double() -> HubDouble:
    hub = HubDouble()
    hub.add_repo(
        SINGLE, {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": _file(_tensors())}
    )
    hub.add_repo(SHARDED, _sharded_files())
    fp8_config = {
        **CONFIG,
        "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"},
    }
    hub.add_repo(
        FP8,
        {
            "config.json": json.dumps(fp8_config).encode(),
            "model.safetensors": _file(_tensors("F8_E4M3")),
        },
    )
    hub.add_repo(
        GATED,
        {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": _file(_tensors())},
        gated=True,
    )
    hub.add_repo("small-org/pickles", {"config.json": b"{}", "pytorch_model.bin": b"\0" * 64})
    return hub


@pytest.fixture
def hub(online: None, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubDouble]:
    double = _double()
    with double.running():
        monkeypatch.setenv("HF_ENDPOINT", double.url)
        yield double


def _tensor_bytes_fetched(hub: HubDouble) -> int:
    """The most bytes any GET of a safetensors file asked for (its Range), 0 when none."""
    largest = 0
    for request in hub.requests:
        if request.method == "GET" and request.path.endswith(".safetensors"):
            ranged = request.header("Range")
            assert ranged is not None, "a safetensors file was fetched whole"
            first, _, last = ranged.removeprefix("bytes=").partition("-")
            largest = max(largest, int(last) - int(first) + 1)
    return largest


def test_a_single_file_repo_is_sized_from_its_header(hub: HubDouble, cache: Path) -> None:
    model = resolve_model(SINGLE)

    weight_bytes, by_dtype = _expected(_tensors())
    assert model.source == "hub"
    assert model.weight_bytes == weight_bytes
    assert model.parameters_by_dtype == by_dtype
    assert model.quantization == "bf16"  # most parameters are BF16; the F32 norms do not decide
    assert model.architecture.num_hidden_layers == 2
    assert model.architecture.num_key_value_heads == 2
    assert hub.repos[SINGLE].sha[:12] in model.label
    assert "BF16" in model.label
    # Only the header was read: huggingface_hub's first Range read covers it whole here.
    assert 0 < _tensor_bytes_fetched(hub) <= 100_001
    assert (
        cache / "hub-models" / "small-org--small-llama" / f"{hub.repos[SINGLE].sha}.json"
    ).is_file()


def test_a_sharded_repo_reads_every_shard_header(hub: HubDouble) -> None:
    model = resolve_model(SHARDED)

    weight_bytes, by_dtype = _expected(_tensors())
    assert model.weight_bytes == weight_bytes
    assert model.parameters_by_dtype == by_dtype
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert hub.requests_for(shard), f"{shard}'s header was not read"


def test_quantization_config_decides_the_format(hub: HubDouble) -> None:
    model = resolve_model(FP8)
    assert model.quantization == "fp8"
    assert model.weight_bytes == _expected(_tensors("F8_E4M3"))[0]
    with pytest.raises(BadInputError, match="fp8 checkpoint, not awq"):
        resolve_model(FP8, "awq")


def test_a_second_reading_comes_from_the_cache_and_works_offline(
    hub: HubDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_model(SINGLE)
    headers = len(hub.requests_for("model.safetensors"))

    again = resolve_model(SINGLE)
    assert again.weight_bytes == first.weight_bytes
    assert len(hub.requests_for("model.safetensors")) == headers  # the commit is cached

    import huggingface_hub.constants as hub_constants  # noqa: TID251 - test setup

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    offline = resolve_model(SINGLE)
    assert offline.weight_bytes == first.weight_bytes


def test_gated_missing_and_not_safetensors_are_one_line_each(hub: HubDouble) -> None:
    with pytest.raises(RefusedError) as gated:
        resolve_model(GATED)
    assert f"{hub.url}/{GATED}" in (gated.value.hint or "")
    assert "HF_TOKEN" in (gated.value.hint or "")
    assert "licence" in (gated.value.hint or "")

    with pytest.raises(BadInputError, match="not found"):
        resolve_model("small-org/absent")
    with pytest.raises(BadInputError, match="safetensors"):
        resolve_model("small-org/pickles")
    with pytest.raises(BadInputError, match="no revision"):
        resolve_model(f"{SINGLE}@no-such-branch")


def test_offline_with_nothing_cached_says_so(cache: Path) -> None:
    # the conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(EnvironmentNotReadyError, match="HF_HUB_OFFLINE") as error:
        hub_model_metadata(SINGLE, cache_dir=cache)
    assert error.value.exit_code == ExitCode.ENVIRONMENT


def _appliance(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APPLIANCE, *args], capture_output=True, text=True, check=False, env=env, timeout=300
    )


def test_the_cli_estimates_a_hub_repo_and_refuses_clearly(tmp_path: Path) -> None:
    hub = _double()
    base = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf"),
        "COLUMNS": "120",
    }
    base.pop("HF_TOKEN", None)
    with hub.running():
        env = {**base, "HF_ENDPOINT": hub.url}
        sized = _appliance("estimate", SHARDED, "--gpu", "l40s", "--json", env=env)
        assert sized.returncode == ExitCode.OK, sized.stderr
        assert "Traceback" not in sized.stderr

        gated = _appliance("estimate", GATED, "--gpu", "l40s", env=env)
        assert gated.returncode == ExitCode.REFUSED
        assert "HF_TOKEN" in gated.stderr
        assert "Traceback" not in gated.stderr

        missing = _appliance("estimate", "small-org/absent", "--gpu", "l40s", env=env)
        assert missing.returncode == ExitCode.BAD_INPUT
        assert "Traceback" not in missing.stderr

    offline = _appliance(
        "estimate", "small-org/never-read", "--gpu", "l40s", env={**base, "HF_HUB_OFFLINE": "1"}
    )
    assert offline.returncode == ExitCode.ENVIRONMENT
    assert "HF_HUB_OFFLINE" in offline.stderr
    assert "Traceback" not in offline.stderr


def test_recommend_ranks_a_hub_repo_and_says_what_its_quantised_variants_need(
    hub: HubDouble,
) -> None:
    from appliance.fit import gpu_target_from_box
    from appliance.hardware import detect_box
    from appliance.local_model import hub_candidates
    from appliance.recommend import Workload, recommend, would_need_lines

    candidates = hub_candidates(SINGLE)
    assert [v.repo for v in candidates.model.variants] == [SINGLE]
    bf16_bytes = candidates.model.variants[0].weight_bytes
    needs = {m.variants[0].quantization: m.variants[0].weight_bytes for m in candidates.would_need}
    # The small Llama's linear weights: 2 layers x (q, k, v, o, gate, up, down) parameters.
    linear = 2 * (256 * 256 * 2 + 128 * 256 * 2 + 512 * 256 * 3)
    kept = bf16_bytes - 2 * linear  # embeddings, lm_head and F32 norms stay as shipped
    assert needs["fp8"] == kept + linear
    assert needs["awq"] == kept + round(linear * (0.5 + 2.5 / 128))

    box = detect_box(simulate="rtx4090")
    workload = Workload.for_kind("chat", users=4)
    ranked = recommend(box, workload, [candidates.model])
    assert ranked.top.repo == SINGLE
    assert {c.repo for c in ranked.candidates} == {SINGLE}  # nothing from the catalog
    lines = would_need_lines(gpu_target_from_box(box), workload, candidates.would_need)
    assert any(line.strip().startswith("FP8") and "would fit" in line for line in lines)

    # A quantised repo has nothing more to say.
    assert hub_candidates(FP8).would_need == ()


def test_the_cli_recommends_a_hub_repo(tmp_path: Path) -> None:
    hub = _double()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf"),
    }
    env.pop("HF_TOKEN", None)
    profile = tmp_path / "p.yaml"
    with hub.running():
        env["HF_ENDPOINT"] = hub.url
        ranked = _appliance(
            "recommend", "--simulate", "rtx4090", "--workload", "chat", "--users", "4",
            "--model", SHARDED, "-o", str(profile), env=env,
        )  # fmt: skip
        assert ranked.returncode == ExitCode.OK, ranked.stderr
        assert "1. small-llama-sharded BF16" in ranked.stdout
        assert "Quantised variants this repo does not ship would need" in ranked.stdout
        assert f"repo: {SHARDED}" in profile.read_text()

        gated = _appliance(
            "recommend", "--simulate", "rtx4090", "--workload", "chat", "--model", GATED, env=env
        )
        assert gated.returncode == ExitCode.REFUSED
        assert "Traceback" not in gated.stderr


def test_when_the_named_model_fits_nowhere_the_refusal_names_it() -> None:
    from appliance.catalog import load_catalog
    from appliance.hardware import detect_box
    from appliance.recommend import Workload, recommend

    big = load_catalog().model("llama-3.3-70b-instruct")
    assert big is not None
    ranked = recommend(detect_box(simulate="rtx4090"), Workload.for_kind("chat"), [big])
    with pytest.raises(RefusedError, match=f"nothing in {big.name} fits"):
        _ = ranked.top


def test_a_header_larger_than_the_first_range_read_is_read_in_full(
    online: None, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large MoE shards carry headers of a megabyte; huggingface_hub reads 100,000 bytes first,
    # then asks for the rest of the header by Range.
    tensors = {
        f"model.layers.{i // 64}.mlp.experts.{i % 64}.down_proj.weight_scale": ("F32", (1,))
        for i in range(3000)
    }
    files = {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": _file(tensors)}
    assert len(files["model.safetensors"]) > 100_000 + 3000 * 4
    double = HubDouble()
    double.add_repo("small-org/many-tensors", files)
    with double.running():
        monkeypatch.setenv("HF_ENDPOINT", double.url)
        metadata = hub_model_metadata("small-org/many-tensors", cache_dir=cache)
        reads = [r.header("Range") for r in double.requests_for("model.safetensors")]
    assert metadata.weight_bytes == 3000 * 4
    assert metadata.parameters == {"F32": 3000}
    assert len(reads) == 2
    assert reads[0] == "bytes=0-100000"
