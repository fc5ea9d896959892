"""SGLang 0.5.21's launch_server flags that the appliance writes, with their sources.

SGLang's argument parser cannot be imported without torch: `import sglang` runs
`sglang/srt/utils/common.py`, which imports torch (checked with PyPI's sglang 0.5.21 and 0.5.23
installed with `--no-deps`), and the CUDA torch wheel is gigabytes. So, unlike vLLM's (see
`vllm_cpu.py`), the parser is not run here. Instead this table records each flag the appliance
writes as SGLang 0.5.21 declares it, and the tests check `sglang_command` against it.

SGLang 0.5.21 declares its flags as annotated fields of msgspec structs under
`python/sglang/srt/arg_groups/fields/`; `arg_groups/arg_utils.py` `_field_to_cli_name` turns a
field `x_y` into `--x-y`, plus the `aliases` of its `Arg(...)`. Where the wheel's source is on
this machine (`$APPLIANCE_SGLANG_SRC`, or `~/.cache/llm-appliance/sglang-src-0.5.21` made by
`pip install --no-deps sglang==0.5.21` into a venv), `fields_in_source` reads those files with
`ast` (no import) and the tests compare the table with them.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

SGLANG_VERSION = "0.5.21"


@dataclass(frozen=True)
class Flag:
    field: str  # the struct field the flag sets
    source: str  # file under python/sglang/srt/arg_groups/ that declares it
    takes_value: bool
    choices: tuple[str, ...] | None = None  # None: any value of its type


# arg_groups/choices.py QUANTIZATION_CHOICES at 0.5.21 (the entries the appliance may write).
_QUANTIZATION = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8")

FLAGS: dict[str, Flag] = {
    "--model-path": Flag("model_path", "fields/model.py", True),
    "--served-model-name": Flag("served_model_name", "fields/serving.py", True),
    "--host": Flag("host", "fields/serving.py", True),
    "--port": Flag("port", "fields/serving.py", True),
    "--tp-size": Flag("tp_size", "fields/parallel.py", True),  # alias --tensor-parallel-size
    "--context-length": Flag("context_length", "fields/model.py", True),
    "--mem-fraction-static": Flag("mem_fraction_static", "fields/schedule.py", True),
    "--max-running-requests": Flag("max_running_requests", "fields/schedule.py", True),
    "--quantization": Flag("quantization", "fields/model.py", True, _QUANTIZATION),
    "--dtype": Flag(
        "dtype",
        "fields/model.py",
        True,
        ("auto", "half", "float16", "bfloat16", "float", "float32"),
    ),
    "--kv-cache-dtype": Flag(
        "kv_cache_dtype",
        "fields/model.py",
        True,
        ("auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4", "fp4_mx_block16"),
    ),
    "--enable-metrics": Flag("enable_metrics", "fields/observability.py", False),
    "--disable-radix-cache": Flag("disable_radix_cache", "fields/memory.py", False),
    "--disable-custom-all-reduce": Flag("disable_custom_all_reduce", "fields/exec_.py", False),
    "--disable-decode-cuda-graph": Flag("disable_decode_cuda_graph", "fields/exec_.py", False),
    "--disable-prefill-cuda-graph": Flag("disable_prefill_cuda_graph", "fields/exec_.py", False),
}


def check_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """Problems with a `python3 -m sglang.launch_server ...` argv against FLAGS; [] when none."""
    problems: list[str] = []
    if list(argv[:3]) != ["python3", "-m", "sglang.launch_server"]:
        problems.append(f"not a launch_server command: {argv[:3]}")
    rest = list(argv[3:])
    seen: set[str] = set()
    i = 0
    while i < len(rest):
        flag = rest[i]
        spec = FLAGS.get(flag)
        if spec is None:
            problems.append(f"unknown flag {flag}")
            i += 1
            continue
        if flag in seen:
            problems.append(f"{flag} given twice")
        seen.add(flag)
        if spec.takes_value:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                problems.append(f"{flag} without a value")
            elif spec.choices is not None and rest[i + 1] not in spec.choices:
                problems.append(f"{flag} {rest[i + 1]}: not one of {spec.choices}")
            i += 2
        else:
            i += 1
    if "--model-path" not in seen:
        problems.append("no --model-path")
    return problems


def sglang_source() -> Path | None:
    """`sglang/srt/arg_groups` of an unpacked SGLang 0.5.21 wheel on this machine, or None."""
    base = os.environ.get("APPLIANCE_SGLANG_SRC")
    roots = (
        [Path(base)]
        if base
        else list(
            (Path.home() / ".cache" / "llm-appliance" / f"sglang-src-{SGLANG_VERSION}").glob(
                "lib/python3*/site-packages"
            )
        )
    )
    for root in roots:
        groups = root / "sglang" / "srt" / "arg_groups"
        if (groups / "fields").is_dir():
            return groups
    return None


def fields_in_source(groups: Path) -> dict[str, dict[str, object]]:
    """Every annotated field of `groups/fields/*.py`: name → {"file", "no_cli", "choices"}."""
    found: dict[str, dict[str, object]] = {}
    for path in sorted((groups / "fields").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            text = ast.unparse(node.annotation)
            choices: tuple[str, ...] | None = None
            for call in ast.walk(node.annotation):
                if isinstance(call, ast.Call):
                    for keyword in call.keywords:
                        if keyword.arg == "choices" and isinstance(keyword.value, ast.List):
                            choices = tuple(
                                e.value
                                for e in keyword.value.elts
                                if isinstance(e, ast.Constant) and isinstance(e.value, str)
                            )
            found.setdefault(
                node.target.id,
                {
                    "file": f"fields/{path.name}",
                    "no_cli": "no_cli=True" in text,
                    "choices": choices,
                },
            )
    return found


def quantization_choices_in_source(groups: Path) -> tuple[str, ...]:
    tree = ast.parse((groups / "choices.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", None) == "QUANTIZATION_CHOICES" for t in node.targets)
            and isinstance(node.value, ast.List)
        ):
            return tuple(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return ()
