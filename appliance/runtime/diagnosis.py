"""Why an engine did not start, in an operator's words: the common refusals of vLLM and TEI
recognised in their log, each with what to change in the profile."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from appliance.runtime.health import HealthOutcome


@dataclass(frozen=True)
class Diagnosis:
    """What went wrong, in an operator's words, and what to change."""

    cause: str
    hint: str
    suggested_max_model_len: int | None = None


_KV_NEW = re.compile(
    r"max seq len \((?P<len>\d+)\).*?larger than the available KV cache memory"
    r"(?:.*?estimated maximum model length is (?P<fit>\d+))?",
    re.S,
)


_KV_OLD = re.compile(
    r"max seq len \((?P<len>\d+)\) is larger than the maximum number of tokens that can be "
    r"stored in KV cache \((?P<fit>\d+)\)"
)


_PATTERNS: Final[tuple[tuple[re.Pattern[str], Diagnosis], ...]] = (
    (
        re.compile(
            r"CUDA out of memory|torch\.(?:cuda\.)?OutOfMemoryError|CUDA error: out of memory"
        ),
        Diagnosis(
            "the GPU ran out of memory (CUDA out of memory)",
            "lower spec.engine.gpu_memory_utilization, max_num_seqs or max_model_len, pick a "
            "smaller quantization, or check with nvidia-smi that nothing else holds GPU memory",
        ),
    ),
    (
        re.compile(r"No available memory for the cache blocks"),
        Diagnosis(
            "nothing is left for the KV cache after the weights",
            "raise spec.engine.gpu_memory_utilization, or pick a smaller quantization or model",
        ),
    ),
    (
        re.compile(r"Free memory on device .* is less than desired GPU memory utilization"),
        Diagnosis(
            "another process already holds part of the GPU's memory",
            "stop what else runs on the GPU (nvidia-smi lists it), or lower "
            "spec.engine.gpu_memory_utilization",
        ),
    ),
    (
        re.compile(
            r"quantization method .* is not supported for the current GPU|"
            r"Minimum capability: \d+\. *Current capability: \d+|"
            r"not supported for the current GPU|does not support .*quantization",
            re.I,
        ),
        Diagnosis(
            "this GPU does not support the checkpoint's quantization",
            "pick another variant of the model (AWQ/GPTQ Marlin kernels need compute capability "
            "8.0+, FP8 needs 8.9+); `appliance recommend` lists the ones that fit this box",
        ),
    ),
    (
        re.compile(r"GatedRepoError|Access to model .* is restricted|gated repo", re.I),
        Diagnosis(
            "the model is gated on Hugging Face and its weights are not on this box",
            "accept the licence on the model's Hub page, set HF_TOKEN, and download the weights "
            "again (engines run offline and never use a token themselves)",
        ),
    ),
    (
        re.compile(
            r"does not appear to have a file named config\.json|"
            r"Can't load the configuration|LocalEntryNotFoundError|"
            r"Cannot find the requested files in the local cache|"
            r"No such file or directory: '/models|Invalid repository ID or local directory",
            re.I,
        ),
        Diagnosis(
            "the model's weights are missing or incomplete in the models directory",
            "download them again (weights are mounted read-only from spec.storage.models_dir)",
        ),
    ),
)


def diagnose(log_text: str, outcome: HealthOutcome | None = None) -> Diagnosis | None:
    """The common reasons vLLM and TEI refuse to start, recognised in their log."""
    for pattern in (_KV_NEW, _KV_OLD):
        match = pattern.search(log_text)
        if match:
            fit = match.group("fit")
            suggested = int(fit) if fit else None
            hint = (
                f"set spec.engine.max_model_len: {suggested} (the longest context vLLM says fits), "
                "or raise gpu_memory_utilization / use kv_cache_dtype: fp8"
                if suggested
                else "lower spec.engine.max_model_len, or raise gpu_memory_utilization"
            )
            return Diagnosis(
                f"max_model_len {match.group('len')} does not fit in the KV cache left on the GPU",
                hint,
                suggested,
            )
    for pattern, diagnosis in _PATTERNS:
        if pattern.search(log_text):
            return diagnosis
    if outcome is not None and outcome.container is not None and outcome.container.oom_killed:
        return Diagnosis(
            "the kernel killed the engine: the host ran out of RAM",
            "free host memory, or lower max_num_seqs (vLLM's CPU swap space also takes RAM)",
        )
    return None
