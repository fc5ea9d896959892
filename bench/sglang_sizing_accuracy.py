"""How close `appliance.sglang_sizing` comes to real SGLang start-up logs.

Run from the repository root:

    .venv/bin/python bench/sglang_sizing_accuracy.py

Inputs per log (bench/data/sglang_memory_logs.csv, each with its source URL): the flags it ran
with (`assumed_flags` names those the log did not show), the GPU, and what SGLang logged:
"Load weight begin. avail mem" (pre-load free, where shown), "Load weight end. avail mem=A,
mem usage=W", "KV Cache is allocated. #tokens: N, K size: K GB".

Two predictions of N per log, each as % error against the logged N:
- formula: SGLang's budget from the log's own free-memory figures (pre-load free = the begin
  line, else A + W), which checks the formula and the bytes per token;
- plan: what `plan` computes, from the card's CUDA total less the modelled pre-load overhead
  (`SGLANG_PRE_LOAD_OVERHEAD_BYTES`) with the logged weights, where the card is known.
Then the refusal rows: whether SGLang refused to start, and the minimum mem_fraction_static it
printed against the one the formula gives. Every architecture's bytes per token is checked
against the logged K size (SGLang's GB there are GiB: bytes / 2**30).
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
from appliance.sglang_sizing import (  # noqa: E402
    SGLANG_PRE_LOAD_OVERHEAD_BYTES,
    estimate_sglang_memory,
    sglang_kv_pool_bytes,
    sglang_kv_tokens,
)
from appliance.sizing import GIB, cuda_total_bytes, kv_bytes_per_token  # noqa: E402
from appliance.vocabulary import KvCacheDtype  # noqa: E402

DATA = ROOT / "bench" / "data" / "sglang_memory_logs.csv"

# Models the catalog does not carry (QwQ-32B): kept once, as `<key>.json`, for the unit tests too.
# The log's K size checks the KV part below.
ARCHITECTURES = ROOT / "tests" / "fixtures" / "architectures"


def architecture(key: str) -> ModelArchitecture:
    kept = ARCHITECTURES / f"{key}.json"
    if kept.is_file():
        return ModelArchitecture.model_validate_json(kept.read_text(encoding="utf-8"))
    model = load_catalog().model(key)
    assert model is not None, key
    return model.architecture


@dataclass(frozen=True)
class Row:
    id: str
    source_url: str
    sglang_version: str
    gpu: str
    tp: int
    arch: str
    kv_cache_dtype: KvCacheDtype
    fraction: float
    assumed: str
    pre: float | None
    post: float
    weights: float
    tokens: int | None
    k_gib: float | None
    min_fraction: float | None


def _opt(text: str) -> float | None:
    return float(text) if text else None


def load_rows() -> list[Row]:
    with DATA.open(encoding="utf-8") as handle:
        return [
            Row(
                id=r["id"],
                source_url=r["source_url"],
                sglang_version=r["sglang_version"],
                gpu=r["gpu"],
                tp=int(r["tensor_parallel_size"]),
                arch=r["arch"],
                kv_cache_dtype=r["kv_cache_dtype"],  # type: ignore[arg-type]
                fraction=float(r["mem_fraction_static"]),
                assumed=r["assumed_flags"],
                pre=_opt(r["logged_pre_load_gib"]),
                post=float(r["logged_post_load_gib"]),
                weights=float(r["logged_weights_gib"]),
                tokens=int(r["logged_kv_tokens"]) if r["logged_kv_tokens"] else None,
                k_gib=_opt(r["logged_k_gib"]),
                min_fraction=_opt(r["logged_min_fraction"]),
            )
            for r in csv.DictReader(handle)
        ]


def _error(predicted: int, logged: int) -> float:
    return 100 * (predicted - logged) / logged


def _gpu_total(gpu: str) -> int | None:
    spec = load_catalog().gpu(gpu)
    return cuda_total_bytes(spec.memory_total_bytes) if spec is not None else None


def main() -> int:
    rows = load_rows()
    formula_errors: list[float] = []
    plan_errors: list[float] = []
    print(
        f"{'log':28} {'SGLang':22} {'logged N':>9} {'formula':>9} {'err %':>6} "
        f"{'plan':>9} {'err %':>6}  KV B/token (logged K)  assumed"
    )
    for row in rows:
        if row.tokens is None:
            continue
        arch = architecture(row.arch)
        per_token = kv_bytes_per_token(arch, row.tp, row.kv_cache_dtype)
        pre = row.pre if row.pre is not None else row.post + row.weights
        pool = sglang_kv_pool_bytes(pre * GIB, row.post * GIB, row.fraction)
        formula = sglang_kv_tokens(pool, per_token)
        formula_errors.append(_error(formula, row.tokens))
        plan_text = f"{'-':>9} {'-':>6}"
        total = _gpu_total(row.gpu)
        if total is not None:
            plan = estimate_sglang_memory(
                arch,
                int(row.weights * GIB),
                total,
                tensor_parallel_size=row.tp,
                mem_fraction_static=row.fraction,
                context_length=4096,
                kv_cache_dtype=row.kv_cache_dtype,
            ).kv_cache_tokens
            plan_errors.append(_error(plan, row.tokens))
            plan_text = f"{plan:>9,} {plan_errors[-1]:>+6.2f}"
        k_check = ""
        if row.k_gib is not None:
            k_from_arch = row.tokens * per_token / 2 / GIB
            k_check = f"{per_token:,} ({k_from_arch:.2f} vs {row.k_gib:.2f} GiB)"
        print(
            f"{row.id:28} {row.sglang_version:22} {row.tokens:>9,} {formula:>9,} "
            f"{formula_errors[-1]:>+6.2f} {plan_text}  {k_check}  {row.assumed or '-'}"
        )
    print()
    for name, errors in (("formula (logged free memory)", formula_errors), ("plan", plan_errors)):
        absolute = [abs(e) for e in errors]
        if absolute:
            print(
                f"{name:30} n={len(absolute)}  median |err| {statistics.median(absolute):.2f} %"
                f"  max |err| {max(absolute):.2f} %"
            )
    print(f"plan's pre-load overhead: {SGLANG_PRE_LOAD_OVERHEAD_BYTES / GIB:.2f} GiB")
    print()
    print("refusals (SGLang 0.5.x prints the minimum viable fraction, 1 - post/pre):")
    for row in rows:
        if row.min_fraction is None:
            continue
        pre = row.pre if row.pre is not None else row.post + row.weights
        refused = sglang_kv_pool_bytes(pre * GIB, row.post * GIB, row.fraction) <= 0
        minimum = 1 - row.post / pre
        print(
            f"  {row.id}: refused {'yes' if refused else 'NO'} (logged: yes); minimum fraction "
            f"{minimum:.4f} vs logged {row.min_fraction:.4f}  [{row.source_url}]"
        )
    print()
    print("sources:")
    for row in rows:
        print(f"  {row.id}: {row.source_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
