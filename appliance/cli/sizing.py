"""`appliance estimate` and `appliance recommend`: the memory model and the ranking, as text
or JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, get_args

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    Commands,
)
from appliance.errors import BadInputError, ExitCode
from appliance.vocabulary import (
    DEFAULT_MODELS_DIR,
    DEFAULT_STATE_DIR,
    DEVICES,
    ENGINE_KINDS,
    KvCacheDtype,
    Quantization,
)


def _cmd_estimate(args: argparse.Namespace) -> ExitCode:
    from appliance.fit import (
        DoesNotFitError,
        estimate_for,
        estimate_json,
        gpu_target_from_box,
        render_estimate,
        resolve_gpu,
    )
    from appliance.local_model import resolve_model
    from appliance.sizing import PINNED_VLLM_VERSION, EngineFlags

    model = resolve_model(args.model, args.quantization)
    if args.engine == "sglang":
        return _estimate_sglang(args, model)
    if args.device == "cpu":
        return _estimate_cpu(args, model)
    if args.cpu_kv_cache_gib is not None:
        raise BadInputError("--cpu-kv-cache-gib is for --device cpu")
    target = _estimate_target(args, gpu_target_from_box, resolve_gpu)
    try:
        flags = EngineFlags(
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_cache_dtype=args.kv_cache_dtype,
            enforce_eager=args.enforce_eager,
        )
    except ValueError as error:
        raise BadInputError(str(error)) from None
    try:
        estimate = estimate_for(
            model,
            target,
            tensor_parallel_size=args.tp,
            flags=flags,
            vllm_version=args.vllm_version or PINNED_VLLM_VERSION,
        )
    except DoesNotFitError as error:
        if args.json:
            print(json.dumps(estimate_json(error.estimate), indent=2))
        raise
    if args.json:
        print(json.dumps(estimate_json(estimate), indent=2))
    else:
        print(render_estimate(estimate, model.label))
    return ExitCode.OK


# Flags that only mean something to vLLM's budget, and why SGLang's has no counterpart.
_VLLM_ONLY_FLAGS = (
    ("vllm_version", "--vllm-version", "picks vLLM's memory rules"),
    ("max_num_batched_tokens", "--max-num-batched-tokens", "is vLLM's scheduler budget"),
    (
        "max_num_seqs",
        "--max-num-seqs",
        "changes vLLM's activation and CUDA-graph memory; SGLang's KV pool does not depend on it",
    ),
    (
        "enforce_eager",
        "--enforce-eager",
        "drops vLLM's CUDA graphs; SGLang keeps them outside its mem_fraction_static share",
    ),
    ("cpu_kv_cache_gib", "--cpu-kv-cache-gib", "is for vLLM's CPU build"),
)
# `nearest_sglang_settings` words its suggestions as profile keys; estimate's are its flags.
_PROFILE_KEY_FLAGS = {
    "spec.engine.max_model_len": "--max-model-len",
    "spec.engine.gpu_memory_utilization": "--gpu-memory-utilization",
    "spec.engine.kv_cache_dtype": "--kv-cache-dtype",
}


def _estimate_sglang(args: argparse.Namespace, model: Any) -> ExitCode:
    """`estimate --engine sglang`: SGLang's mem_fraction_static budget
    (`appliance.sglang_sizing`), the model `plan` uses for a `kind: sglang` profile;
    --gpu-memory-utilization is SGLang's --mem-fraction-static, as in a profile."""
    from appliance.errors import RefusedError
    from appliance.fit import (
        estimate_sglang_for,
        gpu_target_from_box,
        render_sglang_estimate,
        resolve_gpu,
    )
    from appliance.sizing import DEFAULT_GPU_MEMORY_UTILIZATION

    if args.device == "cpu":
        raise BadInputError(
            "--engine sglang sizes GPUs: the CPU target runs vLLM's CPU image",
            hint="drop --device cpu, or --engine sglang",
        )
    for attribute, flag, why in _VLLM_ONLY_FLAGS:
        if getattr(args, attribute) not in (None, False):
            raise BadInputError(
                f"{flag} {why}; it does not apply to --engine sglang", hint=f"drop {flag}"
            )
    target = _estimate_target(args, gpu_target_from_box, resolve_gpu)
    tp = args.tp or target.count
    if tp > target.count:
        raise BadInputError(
            f"--tp {tp} needs {tp} GPUs but --gpus is {target.count}",
            hint=f"add --gpus {tp}, or lower --tp",
        )
    estimate, nearest = estimate_sglang_for(
        model,
        target,
        tensor_parallel_size=tp,
        mem_fraction_static=args.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION,
        context_length=args.max_model_len,
        kv_cache_dtype=args.kv_cache_dtype,
    )
    if args.json:
        print(json.dumps(estimate.to_json_dict(), indent=2))
    else:
        print(render_sglang_estimate(estimate, model.label))
    if not estimate.fits:
        flags = []
        for setting in nearest:
            key, _, value = setting.partition(": ")
            flags.append(f"{_PROFILE_KEY_FLAGS.get(key, key)} {value}")
        raise RefusedError(
            f"{model.label} does not fit on {target.label}: {estimate.reason}",
            hint="nearest settings that fit: " + "; ".join(flags)
            if flags
            else "nothing close fits on this GPU: choose a smaller model or a larger GPU",
        )
    return ExitCode.OK


def _estimate_cpu(args: argparse.Namespace, model: Any) -> ExitCode:
    """`estimate --device cpu`: the model on this machine's (or a simulated box's) CPU target,
    in RAM terms."""
    from appliance.cpu_target import cpu_estimate_json, render_cpu_estimate
    from appliance.fit import estimate_cpu_for
    from appliance.hardware import detect_box

    if args.gpu_memory_gib is not None or args.gpu is not None or (args.tp or 1) > 1:
        raise BadInputError("--device cpu sizes RAM: drop --gpu, --gpu-memory-gib and --tp")
    box = detect_box(simulate=args.simulate, models_dir=DEFAULT_MODELS_DIR)
    estimate = estimate_cpu_for(
        model,
        box,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        kv_cache_gib=args.cpu_kv_cache_gib,
        kv_cache_dtype=args.kv_cache_dtype,
    )
    if args.json:
        print(json.dumps(cpu_estimate_json(estimate), indent=2))
    else:
        print(render_cpu_estimate(estimate))
    return ExitCode.OK


def _estimate_target(args: argparse.Namespace, from_box: Any, from_flags: Any) -> Any:
    """The GPUs `estimate` sizes for: `--simulate NAME|FILE` (one way to name a box, as in
    recommend, plan and compose), `--gpu-memory-gib N` for a card the catalog lacks, the
    deprecated `--gpu NAME`, or this machine."""
    from appliance.hardware import detect_box

    if args.gpu is not None:
        print(
            "note: --gpu is deprecated: use --simulate NAME (it also takes 2x4090 and a file "
            "`appliance detect --json` wrote)",
            file=sys.stderr,
        )
    if args.simulate is not None:
        name = args.simulate
        if args.gpus != 1:
            # `--simulate rtx4090 --gpus 2` is 2x rtx4090: estimate's own "nearest settings"
            # suggest --gpus N, and they must work as printed.
            import re

            from appliance.hardware.simulate import is_detect_file

            counted = is_detect_file(name) or re.match(r"\s*\d+\s*x", name, re.IGNORECASE)
            if counted:
                raise BadInputError(
                    f"--gpus {args.gpus} does not combine with --simulate {name}, which already "
                    "says how many GPUs",
                    hint="name a single card with --gpus N (--simulate rtx4090 --gpus 2), or "
                    "drop --gpus",
                )
            name = f"{args.gpus}x{name}"
        return from_box(detect_box(simulate=name, models_dir=DEFAULT_MODELS_DIR))
    if args.gpu is None and args.gpu_memory_gib is None:
        return from_box(detect_box(models_dir=DEFAULT_MODELS_DIR))
    return from_flags(args.gpu, args.gpu_memory_gib, args.gpus)


def _cmd_recommend(args: argparse.Namespace) -> ExitCode:
    from appliance.hardware import detect_box
    from appliance.profile import StorageSpec, dump_profile
    from appliance.recommend import Workload, render_recommendation

    box = detect_box(simulate=args.simulate, models_dir=DEFAULT_MODELS_DIR)
    workload = Workload.for_kind(
        args.workload,
        users=args.users,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        context=args.context,
        preference=args.prefer,
        embeddings=args.embeddings,
        allow_gated=args.allow_gated or bool(os.environ.get("HF_TOKEN")),
    )
    extra: list[str] = []
    if args.device == "cpu":
        return _recommend_cpu(args, box, workload)
    from appliance.operations.calibration import recommend_measured

    # What `appliance bench` kept on this box replaces the bandwidth model where it matches.
    state_dir = args.state_dir or DEFAULT_STATE_DIR
    if args.model is None:
        recommendation = recommend_measured(box, workload, state_dir=state_dir)
    else:  # one Hub repo, ranked against its own options; what quantising it would give
        from appliance.fit import gpu_target_from_box
        from appliance.local_model import hub_candidates
        from appliance.recommend import would_need_lines

        hub = hub_candidates(args.model)
        recommendation = recommend_measured(box, workload, [hub.model], state_dir=state_dir)
        extra = would_need_lines(gpu_target_from_box(box), workload, hub.would_need)
        if not recommendation.candidates and not args.json:
            print("\n".join(extra))
    top = recommendation.top  # raises RefusedError (exit 4) when nothing fits
    if args.json:
        print(json.dumps({**recommendation.to_json_dict(), "would_need": extra}, indent=2))
    else:
        print(
            "\n\n".join(t for t in (render_recommendation(recommendation), "\n".join(extra)) if t)
        )
    if args.output is not None:
        storage = StorageSpec.model_validate(
            {
                key: value
                for key, value in (("models_dir", args.models_dir), ("state_dir", args.state_dir))
                if value is not None
            }
        )
        profile = recommendation.to_profile(storage=storage)
        text = dump_profile(profile, comment=recommendation.profile_comment())
        if args.output == Path("-"):
            sys.stdout.write(text)
        else:
            from appliance.fileio import write_output

            write_output(args.output, text)
            print(f"wrote {args.output} ({top.model_name}, {top.quantization})", file=sys.stderr)
    return ExitCode.OK


def _recommend_cpu(args: argparse.Namespace, box: Any, workload: Any) -> ExitCode:
    """`recommend --device cpu`: models on the box's CPU target, in RAM terms."""
    from appliance.local_model import resolve_model
    from appliance.profile import StorageSpec, dump_profile
    from appliance.recommend import recommend_cpu

    models = None if args.model is None else [resolve_model(args.model, "bf16")]
    recommendation = recommend_cpu(box, workload, models)
    model, _ = recommendation.top  # raises RefusedError (exit 4) with the reason
    if args.json:
        print(json.dumps(recommendation.to_json_dict(), indent=2))
    else:
        print(recommendation.render())
    if args.output is not None:
        storage = StorageSpec.model_validate(
            {
                key: value
                for key, value in (("models_dir", args.models_dir), ("state_dir", args.state_dir))
                if value is not None
            }
        )
        text = dump_profile(recommendation.to_profile(storage=storage))
        if args.output == Path("-"):
            sys.stdout.write(text)
        else:
            from appliance.fileio import write_output

            write_output(args.output, text)
            print(f"wrote {args.output} ({model.label}, CPU target)", file=sys.stderr)
    return ExitCode.OK


def _add_estimate(commands: Commands) -> None:
    estimate = commands.add_parser(
        "estimate",
        help=COMMANDS["estimate"].summary,
        description="Reproduce vLLM's start-up memory budget: weights, activations, non-torch "
        "memory, CUDA graphs, KV cache, and the concurrency it gives (with --engine sglang, "
        "SGLang's mem_fraction_static budget instead). Exit 4 when the engine would refuse to "
        "start, with the nearest settings that fit.",
    )
    estimate.add_argument(
        "model", metavar="MODEL", help="catalog id, a Hugging Face repo the catalog knows, or a dir"
    )
    where = estimate.add_mutually_exclusive_group()
    where.add_argument(
        "--simulate",
        metavar="NAME|FILE",
        help="size for a simulated box (rtx4090, 2x4090, l40s, h100, …) or a detect file "
        "(default: this machine)",
    )
    where.add_argument(
        "--gpu-memory-gib",
        type=opt.gpu_memory_gib,
        metavar="N",
        help="one card's memory, for a card the catalog lacks",
    )
    where.add_argument("--gpu", metavar="NAME", help="deprecated: use --simulate NAME")
    estimate.add_argument(
        "--gpus",
        type=opt.positive_int,
        default=1,
        metavar="N",
        help="how many cards (with --gpu-memory-gib or one card named by --simulate)",
    )
    estimate.add_argument("--tp", type=opt.positive_int, metavar="N", help="tensor_parallel_size")
    estimate.add_argument(
        "--quantization",
        choices=get_args(Quantization),
    )
    estimate.add_argument(
        "--gpu-memory-utilization",
        type=opt.fraction,
        metavar="F",
        help="vLLM's default when omitted: 0.92 from v0.20, 0.9 before",
    )
    estimate.add_argument("--max-model-len", type=opt.positive_int, metavar="N")
    estimate.add_argument("--max-num-seqs", type=opt.positive_int, metavar="N")
    estimate.add_argument("--max-num-batched-tokens", type=opt.positive_int, metavar="N")
    estimate.add_argument("--kv-cache-dtype", choices=get_args(KvCacheDtype), default="auto")
    estimate.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    estimate.add_argument(
        "--device",
        choices=DEVICES,
        default="gpu",
        help="cpu: size for vLLM's CPU build in RAM terms (the profile's engine.device)",
    )
    estimate.add_argument(
        "--cpu-kv-cache-gib",
        type=opt.positive_int,
        metavar="N",
        help="with --device cpu: KV cache RAM (default: a quarter of the host's RAM, at most 64)",
    )
    estimate.add_argument(
        "--vllm-version",
        type=opt.vllm_version,
        metavar="V",
        help="follow this vLLM release's memory rules (default: the pinned image's)",
    )
    estimate.add_argument(
        "--engine",
        choices=ENGINE_KINDS,
        default="vllm",
        help="size for this chat engine's budget: vllm (default) or sglang (its "
        "mem_fraction_static model; --gpu-memory-utilization is then --mem-fraction-static)",
    )
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    estimate.set_defaults(handler=_cmd_estimate)


def _add_recommend(commands: Commands) -> None:
    rec = commands.add_parser(
        "recommend",
        help=COMMANDS["recommend"].summary,
        description="Rank (model, quantization, flags) for the box and workload, each with its "
        "memory split and one line of why; the top choice can be written as a profile.",
    )
    rec.add_argument(
        "--simulate", metavar="NAME|FILE", help="recommend for a simulated box or a detect file"
    )
    rec.add_argument("--workload", choices=["chat", "rag", "batch"], required=True)
    rec.add_argument(
        "--model",
        metavar="ORG/NAME",
        help="rank only this Hub repo (read from its config.json and safetensors headers) and "
        "say what its quantised variants would need",
    )
    rec.add_argument("--users", type=opt.positive_int, metavar="N", help="requests at once at peak")
    rec.add_argument("--context", type=opt.positive_int, metavar="N", help="max_model_len wanted")
    rec.add_argument(
        "--prompt-tokens", type=opt.positive_int, metavar="N", help="typical prompt length"
    )
    rec.add_argument(
        "--output-tokens", type=opt.positive_int, metavar="N", help="typical answer length"
    )
    rec.add_argument("--prefer", choices=["quality", "balanced", "speed"], help="what wins ties")
    rec.add_argument(
        "--device",
        choices=DEVICES,
        default="gpu",
        help="cpu: models for vLLM's CPU build on this box's RAM (small bf16/fp16 models only)",
    )
    rec.add_argument(
        "--embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run TEI embeddings on the same GPU (default: on for rag)",
    )
    rec.add_argument(
        "--allow-gated",
        action="store_true",
        help="consider gated models (default when HF_TOKEN is set)",
    )
    rec.add_argument("--json", action="store_true", help="print the ranking as JSON")
    rec.add_argument(
        "-o",
        "--output",
        type=opt.output_file,
        metavar="FILE",
        help="write the top choice as a profile (- for stdout)",
    )
    for kind, default in (("models", DEFAULT_MODELS_DIR), ("state", DEFAULT_STATE_DIR)):
        rec.add_argument(
            f"--{kind}-dir",
            type=lambda text: Path(text).resolve(),
            metavar="DIR",
            help=f"the profile's storage.{kind}_dir (default {default}); e.g. a directory "
            "you own, to try a simulated box without root"
            + ("; its bench results calibrate the ranking" if kind == "state" else ""),
        )
    rec.set_defaults(handler=_cmd_recommend)


def register(commands: Commands) -> None:
    _add_estimate(commands)
    _add_recommend(commands)
