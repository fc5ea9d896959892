"""How close `appliance.sizing` comes to real vLLM start-up logs, against the rule of thumb.

Run from the repository root:

    .venv/bin/python bench/sizing_accuracy.py            # the table
    .venv/bin/python bench/sizing_accuracy.py --rows     # plus one line per log

Inputs per log (bench/data/vllm_memory_logs.csv): the GPU's total memory, the flags, the vLLM
version and the weights vLLM itself reported loading (per GPU), so what is measured is the
rest of the budget — activations, non-torch memory, CUDA graphs, block rounding, the
start-up check. Architectures come from the table below, each with the config.json it was
copied from; the script checks every one against the KV bytes per token the log implies.
Prints median / max absolute % error on "GPU KV cache size" tokens and the share of right
fit / no-fit verdicts, for the appliance's model and for "params x bytes + KV + ~7 GB": over
every log, over the logs the constants were fitted on, over the held-out ones, and over the
held-out ones whose log states every flag (`assumed_flags` names the flags a log did not show
and that were taken as vLLM's defaults; those rows are listed with their error). Then the
paging checks: hybrid models (Gated DeltaNet, Gemma 4's mixed head widths) against logs that
show only "Available KV cache memory" and the tokens or block size vLLM made of it.
"""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.catalog import ModelArchitecture, load_catalog  # noqa: E402
from appliance.sizing import (  # noqa: E402
    GIB,
    EngineFlags,
    estimate_memory,
    hybrid_mamba_block_size,
    kv_bytes_per_token,
    kv_cache_capacity,
    parse_version,
    rule_of_thumb,
)
from appliance.vocabulary import KvCacheDtype  # noqa: E402

DATA = ROOT / "bench" / "data" / "vllm_memory_logs.csv"


def _arch(**numbers: int) -> ModelArchitecture:
    return ModelArchitecture(hf_architecture="?", model_type="?", **numbers)


def _catalog(key: str) -> ModelArchitecture:
    """An architecture as appliance/catalog/models.yaml has it (with its config.json source)."""
    model = load_catalog().model(key)
    assert model is not None, key
    return model.architecture


# Copied from each model's config.json on the Hugging Face Hub (the source is named per entry);
# head_dim = hidden_size / num_attention_heads where the config has no head_dim.
ARCHITECTURES: dict[str, tuple[ModelArchitecture, str]] = {
    "qwen2-7b": (
        _arch(
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            head_dim=128,
            hidden_size=3584,
            intermediate_size=18944,
            vocab_size=152064,
            max_position_embeddings=32768,
        ),
        "Qwen/Qwen2-7B-Instruct config.json",
    ),
    "qwen2.5-7b": (
        _arch(
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            head_dim=128,
            hidden_size=3584,
            intermediate_size=18944,
            vocab_size=152064,
            max_position_embeddings=32768,
        ),
        "Qwen/Qwen2.5-7B-Instruct config.json",
    ),
    "qwen2.5-1.5b": (
        _arch(
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            head_dim=128,
            hidden_size=1536,
            intermediate_size=8960,
            vocab_size=151936,
            max_position_embeddings=32768,
        ),
        "Qwen/Qwen2.5-1.5B-Instruct config.json",
    ),
    "qwen2.5-0.5b": (
        _arch(
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            head_dim=64,
            hidden_size=896,
            intermediate_size=4864,
            vocab_size=151936,
            max_position_embeddings=32768,
        ),
        "Qwen/Qwen2.5-0.5B-Instruct config.json",
    ),
    "qwen3-32b": (
        _arch(
            num_hidden_layers=64,
            num_attention_heads=64,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=5120,
            intermediate_size=25600,
            vocab_size=151936,
            max_position_embeddings=40960,
        ),
        "Qwen/Qwen3-32B config.json (layer/head/size figures also printed in the source post)",
    ),
    "qwen2.5-32b": (
        _arch(
            num_hidden_layers=64,
            num_attention_heads=40,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=5120,
            intermediate_size=27648,
            vocab_size=152064,
            max_position_embeddings=32768,
        ),
        "Qwen/Qwen2.5-32B-Instruct config.json (as in appliance/catalog/models.yaml)",
    ),
    "qwen2.5-14b-131k": (
        _arch(
            num_hidden_layers=48,
            num_attention_heads=40,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=5120,
            intermediate_size=13824,
            vocab_size=152064,
            max_position_embeddings=131072,
        ),
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B config.json: the Qwen2.5-14B shape with "
        "max_position_embeddings 131072 (the refusal in the log is at 131072)",
    ),
    "qwen3-8b": (
        _arch(
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=4096,
            intermediate_size=12288,
            vocab_size=151936,
            max_position_embeddings=40960,
        ),
        "Qwen/Qwen3-8B config.json (as in appliance/catalog/models.yaml)",
    ),
    "llama-3.1-8b": (
        _arch(
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=4096,
            intermediate_size=14336,
            vocab_size=128256,
            max_position_embeddings=131072,
        ),
        "meta-llama/Llama-3.1-8B-Instruct config.json",
    ),
    "llama-3-8b": (
        _arch(
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=4096,
            intermediate_size=14336,
            vocab_size=128256,
            max_position_embeddings=8192,
        ),
        "meta-llama/Meta-Llama-3-8B config.json",
    ),
    "qwen3-0.6b": (
        _arch(
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=1024,
            intermediate_size=3072,
            vocab_size=151936,
            max_position_embeddings=40960,
        ),
        "Qwen/Qwen3-0.6B config.json",
    ),
    "qwen3-30b-a3b": (
        _arch(
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            hidden_size=2048,
            intermediate_size=6144,
            vocab_size=151936,
            max_position_embeddings=40960,
            num_experts=128,
            num_experts_per_token=8,
            moe_intermediate_size=768,
        ),
        "Qwen/Qwen3-30B-A3B config.json (128 experts, 8 active, moe_intermediate_size 768)",
    ),
    "qwen3-coder-30b-a3b": (
        _arch(
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            hidden_size=2048,
            intermediate_size=6144,
            vocab_size=151936,
            max_position_embeddings=262144,
            num_experts=128,
            num_experts_per_token=8,
            moe_intermediate_size=768,
        ),
        "Qwen/Qwen3-Coder-30B-A3B-Instruct config.json (the Qwen3-30B-A3B shape, 256K context)",
    ),
    "qwen3-235b-a22b": (
        _arch(
            num_hidden_layers=94,
            num_attention_heads=64,
            num_key_value_heads=4,
            head_dim=128,
            hidden_size=4096,
            intermediate_size=12288,
            vocab_size=151936,
            max_position_embeddings=262144,
            num_experts=128,
            num_experts_per_token=8,
            moe_intermediate_size=1536,
        ),
        "Qwen/Qwen3-235B-A22B-Instruct-2507 config.json (every layer MoE, 128 experts, top-8)",
    ),
    "llama-3.3-70b": (
        _arch(
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            head_dim=128,
            hidden_size=8192,
            intermediate_size=28672,
            vocab_size=128256,
            max_position_embeddings=131072,
        ),
        "meta-llama/Llama-3.3-70B-Instruct config.json (as in the catalog)",
    ),
    "gemma3-27b": (
        _arch(
            num_hidden_layers=62,
            num_attention_heads=32,
            num_key_value_heads=16,
            head_dim=128,
            hidden_size=5376,
            intermediate_size=21504,
            vocab_size=262208,
            max_position_embeddings=131072,
            sliding_window=1024,
            sliding_window_layers=tuple(i for i in range(62) if (i + 1) % 6),  # type: ignore[arg-type]
            vision_hidden_size=1152,
            vision_intermediate_size=4304,
            vision_patches_per_item=4096,
            mm_tokens_per_item=256,
        ),
        "google/gemma-3-27b-it config.json text_config (5 sliding layers of 1024 per global "
        "layer; V0 keeps full attention everywhere) and vision_config (SigLIP: hidden 1152, "
        "intermediate 4304, image 896 / patch 14 = 4096 patches; mm_tokens_per_image 256)",
    ),
    "gpt-oss-20b": (
        _arch(
            num_hidden_layers=24,
            num_attention_heads=64,
            num_key_value_heads=8,
            head_dim=64,
            hidden_size=2880,
            intermediate_size=2880,
            vocab_size=201088,
            max_position_embeddings=131072,
            sliding_window=128,
            sliding_window_layers=tuple(range(0, 24, 2)),  # type: ignore[arg-type]
            num_experts=32,
            num_experts_per_token=4,
            moe_intermediate_size=2880,
        ),
        "openai/gpt-oss-20b config.json (as in appliance/catalog/models.yaml: sliding 128 on even "
        "layers, full attention on odd ones, 32 experts, 4 active, head_dim 64)",
    ),
    "phi-4": (
        _arch(
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=10,
            head_dim=128,
            hidden_size=5120,
            intermediate_size=17920,
            vocab_size=100352,
            max_position_embeddings=16384,
        ),
        "microsoft/phi-4 config.json (as in appliance/catalog/models.yaml)",
    ),
    # The catalog's own entries, so the bench checks what `estimate` and `recommend` size.
    "mistral-small-3.1-24b": (
        _catalog("mistral-small-24b-instruct-2501"),
        "the Mistral Small 24B text shape of the catalog's mistral-small-24b-instruct-2501 "
        "(params.json: 40 layers, 32 heads, 8 KV heads, head_dim 128, hidden 5120, MLP 32768, "
        "vocab 131072), which Mistral Small 3.1/3.2 keep under their Pixtral vision tower: the "
        "logs' 163,840 KV bytes per token = 40 x 8 x 128 x 2 x 2 confirm it; the tower's "
        "start-up profile is not modelled",
    ),
    "mixtral-8x7b": (
        _catalog("mixtral-8x7b-instruct-v0.1"),
        "mistralai/Mixtral-8x7B-Instruct-v0.1 config.json (as in appliance/catalog/models.yaml)",
    ),
    "deepseek-v2-lite": (
        _catalog("deepseek-v2-lite-chat"),
        "deepseek-ai/DeepSeek-V2-Lite-Chat config.json (as in appliance/catalog/models.yaml: "
        "MLA, kv_lora_rank 512 + qk_rope_head_dim 64)",
    ),
    "gemma2-9b": (
        _catalog("gemma-2-9b-it"),
        "google/gemma-2-9b-it config.json (as in appliance/catalog/models.yaml)",
    ),
    "gemma2-27b": (
        _catalog("gemma-2-27b-it"),
        "google/gemma-2-27b-it config.json (as in appliance/catalog/models.yaml)",
    ),
    "llama4-scout": (
        _catalog("llama-4-scout-17b-16e-instruct"),
        "meta-llama/Llama-4-Scout-17B-16E-Instruct config.json (as in "
        "appliance/catalog/models.yaml: chunked attention 8192, every 4th layer global)",
    ),
}

V0_ONLY = {
    "art-qwen25-0.5b-4090d",  # Unsloth forces the V0 engine on v0.8.5
    "bd-qwen3-30b-a3b-w4a16-3090",  # VLLM_USE_V1=0 on v0.8.5
    "hh-gemma3-27b-awq-24g",  # VLLM_USE_V1=0 on v0.8.3
}
NO_FLASHINFER = {"dl-7b-2xa100-40g-tp2"}  # its log: "FlashInfer is not available"


@dataclass(frozen=True)
class Row:
    raw: dict[str, str]

    def get(self, key: str) -> str:
        return self.raw[key].strip()

    def number(self, key: str) -> float | None:
        value = self.get(key)
        return float(value) if value else None

    def integer(self, key: str) -> int | None:
        value = self.get(key)
        return int(value) if value else None


@dataclass(frozen=True)
class Result:
    row_id: str
    logged_tokens: int | None
    logged_started: bool
    model_tokens: int
    model_fits: bool
    thumb_tokens: int
    thumb_fits: bool

    def error(self, tokens: int) -> float | None:
        if not self.logged_tokens:
            return None
        return abs(tokens - self.logged_tokens) / self.logged_tokens * 100


def _compute_capability(gpu: str) -> tuple[int, int]:
    """Only Hopper changes the budget (NCCL under TP); the rest are sized as Ampere or later."""
    return (9, 0) if any(name in gpu.upper() for name in ("H100", "H200", "H20")) else (8, 0)


def load_rows() -> list[Row]:
    with DATA.open(newline="", encoding="utf-8") as handle:
        return [Row(raw) for raw in csv.DictReader(handle)]


def evaluate(row: Row, gpu_memory_utilization: float | None = None) -> Result:
    """The appliance's and the thumb rule's figures for one log (`gpu_memory_utilization`
    replaces the row's, to ask what a log whose command is not shown must have run with)."""
    architecture, _ = ARCHITECTURES[row.get("arch")]
    tp = int(row.get("tensor_parallel_size"))
    gpu_bytes = int(float(row.get("gpu_memory_gib")) * GIB)
    weights = float(row.get("logged_weights_gib")) * GIB * tp
    flags = EngineFlags(
        gpu_memory_utilization=gpu_memory_utilization or float(row.get("gpu_memory_utilization")),
        max_model_len=row.integer("max_model_len"),
        max_num_seqs=row.integer("max_num_seqs"),
        max_num_batched_tokens=row.integer("max_num_batched_tokens"),
        kv_cache_dtype="fp8" if row.get("kv_cache_dtype") == "fp8" else "auto",
        enforce_eager=row.get("enforce_eager") == "true",
        entry_point="offline" if row.get("entry_point") == "offline" else "serve",
        flashinfer_sampler=row.get("id") not in NO_FLASHINFER,
    )
    estimate = estimate_memory(
        architecture,
        int(weights),
        gpu_bytes,
        gpu_count=int(row.get("gpu_count")),
        tensor_parallel_size=tp,
        flags=flags,
        vllm_version=row.get("vllm_version"),
        gpu_name=row.get("gpu"),
        compute_capability=_compute_capability(row.get("gpu")),
        v1_engine=False if row.get("id") in V0_ONLY else None,
    )
    per_token_total = kv_bytes_per_token(architecture, 1, flags.kv_cache_dtype)
    thumb = rule_of_thumb(
        float(row.get("params_billion")),
        float(row.get("weight_bytes_per_param")),
        gpu_bytes,
        per_token_total,
        estimate.max_model_len,
        gpu_count=int(row.get("gpu_count")),
        gpu_memory_utilization=estimate.gpu_memory_utilization,
    )
    logged_tokens = row.integer("logged_kv_tokens")
    kv_gib = row.number("logged_kv_cache_gib")
    if logged_tokens is None and kv_gib is not None and kv_gib > 0:
        # Only the KV GiB was logged: turn it into tokens the way vLLM does (whole blocks).
        block_bytes = estimate.kv_bytes_per_token * flags.block_size
        logged_tokens = int(kv_gib * GIB // block_bytes) * flags.block_size
    return Result(
        row_id=row.get("id"),
        logged_tokens=logged_tokens,
        logged_started=row.get("started") == "yes",
        model_tokens=estimate.kv_cache_tokens,
        model_fits=estimate.fits,
        thumb_tokens=thumb.kv_cache_tokens,
        thumb_fits=thumb.fits,
    )


def check_architectures(rows: list[Row]) -> list[str]:
    """Every log with KV GiB and tokens implies KV bytes per token: the table must agree."""
    problems = []
    for row in rows:
        kv_gib, tokens = row.number("logged_kv_cache_gib"), row.integer("logged_kv_tokens")
        if not kv_gib or not tokens or kv_gib <= 0:
            continue
        architecture, _ = ARCHITECTURES[row.get("arch")]
        hybrid = architecture.sliding_window_layers or architecture.attention_chunk_size
        if hybrid and parse_version(row.get("vllm_version")) >= (0, 10, 0):
            # The hybrid allocator's "GPU KV cache size" is max_concurrency x max_model_len
            # over groups of unequal growth, not GiB / bytes per token.
            continue
        tp = int(row.get("tensor_parallel_size"))
        dtype: KvCacheDtype = "fp8" if row.get("kv_cache_dtype") == "fp8" else "auto"
        expected = kv_bytes_per_token(architecture, tp, dtype)
        implied = kv_gib * GIB / tokens
        if abs(implied - expected) / expected > 0.01:  # the GiB figure is rounded to 0.01
            problems.append(f"{row.get('id')}: log implies {implied:.0f} B/token, table {expected}")
    return problems


def _summary(errors: list[float], verdicts: list[bool]) -> tuple[str, str, str]:
    median = f"{statistics.median(errors):.1f} %" if errors else "n/a"
    worst = f"{max(errors):.1f} %" if errors else "n/a"
    right = f"{sum(verdicts)}/{len(verdicts)}"
    return median, worst, right


def main(argv: list[str]) -> int:
    rows = load_rows()
    problems = check_architectures(rows)
    for problem in problems:
        print("architecture mismatch:", problem)
    results = [evaluate(row) for row in rows]
    if "--rows" in argv:
        print(f"{'log':<26}{'logged':>11}{'appliance':>11}{'err %':>7}{'thumb':>11}{'err %':>7}")
        for r in results:
            model_err, thumb_err = r.error(r.model_tokens), r.error(r.thumb_tokens)
            print(
                f"{r.row_id:<26}{r.logged_tokens or '-':>11}{r.model_tokens:>11}"
                f"{'' if model_err is None else f'{model_err:.1f}':>7}{r.thumb_tokens:>11}"
                f"{'' if thumb_err is None else f'{thumb_err:.1f}':>7}"
                f"  started={'yes' if r.logged_started else 'no '}"
                f" appliance={'fit' if r.model_fits else 'no-fit'}"
                f" thumb={'fit' if r.thumb_fits else 'no-fit'}"
            )
        print()
    splits = {row.get("id"): row.get("split") or "fitted" for row in rows}
    assumed = {row.get("id"): row.get("assumed_flags") for row in rows}
    # "unverified": a log whose gpu_memory_utilization is not known (no command shown, and
    # the tool that ran vLLM sets its own): it cannot test the model, so it is listed below
    # with the utilization that would reproduce it, outside the figures.
    unverified = [r for r in results if splits[r.row_id] == "unverified"]
    results = [r for r in results if splits[r.row_id] != "unverified"]
    held_out = [r for r in results if splits[r.row_id] != "fitted"]
    groups = [
        ("all logs", results),
        ("fitted on", [r for r in results if splits[r.row_id] == "fitted"]),
        ("held out", held_out),
        ("held out, every flag stated in the log", [r for r in held_out if not assumed[r.row_id]]),
    ]
    for title, group in groups:
        if group:
            _table(title, group)
    print("KV paging of hybrid models against logs that show only the KV side:")
    checks = paging_checks()
    for line in checks:
        print("  " + line)
    print()
    problems += [line for line in checks if line.startswith("BAD")]
    by_id = {row.get("id"): row for row in rows}
    for r in results + unverified:
        if assumed[r.row_id]:
            error = r.error(r.model_tokens)
            print(
                f"{r.row_id}{' (unverified, not in the figures)' if r in unverified else ''}: "
                f"flags not in the log, taken as vLLM's defaults: {assumed[r.row_id]}"
                + ("" if error is None else f" (appliance error {error:.1f} %)")
                + _matching_utilization(by_id[r.row_id], assumed[r.row_id])
            )
    return 1 if problems else 0


@dataclass(frozen=True)
class PagingCheck:
    """A log that shows how vLLM pages a hybrid model's cache but not the whole budget (no
    weights line, or a custom build in front of it): the model is given the logged "Available
    KV cache memory" and must reproduce the logged tokens or block size."""

    source: str
    catalog_key: str
    available_gib: float
    max_model_len: int
    flags: EngineFlags
    vllm_version: str
    logged_tokens: int | None = None
    logged_block_size: int | None = None
    tensor_parallel_size: int = 1
    max_num_batched_tokens: int = 8192
    tolerance: float = 0.005  # the GiB figure is rounded to 0.01


PAGING_CHECKS = (
    PagingCheck(
        "club-3090 issue #612 (v0.24.0, RTX 5090, fp8 KV, prefix caching, max_num_seqs 1): "
        "'Available KV cache memory: 5.98 GiB', 'GPU KV cache size: 567,978 tokens'",
        "qwen3.6-35b-a3b",
        5.98,
        131072,
        EngineFlags(kv_cache_dtype="fp8", enable_prefix_caching=True),
        "0.24.0",
        logged_tokens=567_978,
    ),
    PagingCheck(
        "club-3090 issue #1047 (the same 27B shape, fp8 KV): 'Setting attention block size to "
        "1568 tokens'",
        "qwen3.6-27b",
        0.0,
        262144,
        EngineFlags(kv_cache_dtype="fp8"),
        "0.32.0",
        logged_block_size=1568,
    ),
    PagingCheck(
        "vLLM issue #43308 (v0.21.0, A100 80GB, ~50 GB of KV cache, max_model_len assumed "
        "262,144): '~525k tokens' (approximate, hence the wide tolerance)",
        "gemma-4-31b-it",
        50.0,
        262144,
        EngineFlags(),
        "0.21.0",
        logged_tokens=525_000,
        max_num_batched_tokens=2048,
        tolerance=0.12,
    ),
)


def paging_checks() -> list[str]:
    """One line per PAGING_CHECKS entry, and whether it holds (False lines fail the run)."""
    catalog = load_catalog()
    lines = []
    for check in PAGING_CHECKS:
        model = catalog.model(check.catalog_key)
        assert model is not None, check.catalog_key
        arch, tp = model.architecture, check.tensor_parallel_size
        if check.logged_block_size is not None:
            got = hybrid_mamba_block_size(arch, tp, check.flags.kv_cache_dtype)
            ok = got == check.logged_block_size
            lines.append(
                f"{'ok ' if ok else 'BAD'} {check.catalog_key}: block {got} tokens, "
                f"logged {check.logged_block_size} - {check.source}"
            )
            continue
        tokens, _ = kv_cache_capacity(
            arch,
            int(check.available_gib * GIB),
            check.max_model_len,
            tensor_parallel_size=tp,
            flags=check.flags,
            max_num_batched_tokens=check.max_num_batched_tokens,
            vllm_version=check.vllm_version,
        )
        logged = check.logged_tokens or 0
        error = abs(tokens - logged) / logged
        ok = error <= check.tolerance
        lines.append(
            f"{'ok ' if ok else 'BAD'} {check.catalog_key}: {tokens:,} tokens, logged "
            f"{logged:,} ({error * 100:.1f} %) - {check.source}"
        )
    return lines


def _matching_utilization(row: Row, assumed_flags: str) -> str:
    """For a log whose gpu_memory_utilization was assumed: the value at which the model
    reproduces its KV tokens (a bisection; the KV cache grows with the utilization)."""
    logged = row.integer("logged_kv_tokens")
    if "gpu_memory_utilization" not in assumed_flags or not logged:
        return ""
    low, high = 0.3, 0.99
    for _ in range(30):
        middle = (low + high) / 2
        if evaluate(row, middle).model_tokens < logged:
            low = middle
        else:
            high = middle
    return f"; the log is reproduced at gpu_memory_utilization {high:.3f}"


def _table(title: str, results: list[Result]) -> None:
    """Median / max |error| on KV tokens and right verdicts, for the model and the thumb rule.

    "fitted on": the logs the calibrated constants in appliance/sizing.py were fitted on, so
    their error flatters the model; "held out": logs added after the fit, never used to tune.
    """
    with_tokens = [r for r in results if r.logged_tokens]
    model = _summary(
        [e for r in with_tokens if (e := r.error(r.model_tokens)) is not None],
        [r.model_fits == r.logged_started for r in results],
    )
    thumb = _summary(
        [e for r in with_tokens if (e := r.error(r.thumb_tokens)) is not None],
        [r.thumb_fits == r.logged_started for r in results],
    )
    print(
        f"{title}: {len(results)} vLLM start-up logs ({len(with_tokens)} with a KV token "
        f"count, {sum(not r.logged_started for r in results)} refusals)"
    )
    print(f"{'':<22}{'median |err|':>14}{'max |err|':>12}{'verdicts right':>16}")
    print(f"{'appliance.sizing':<22}{model[0]:>14}{model[1]:>12}{model[2]:>16}")
    print(f"{'rule of thumb':<22}{thumb[0]:>14}{thumb[1]:>12}{thumb[2]:>16}")
    print()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
