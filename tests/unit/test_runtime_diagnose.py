"""The start-up failures of vLLM an operator meets most, recognised from real log lines."""

from __future__ import annotations

from appliance.runtime.diagnosis import diagnose

# vLLM 0.32's own message (vllm/v1/core/kv_cache_utils.py), as it logs it.
KV_0_32 = (
    "ValueError: To serve at least one request with the model's max seq len (32768), (4.00 GiB "
    "KV cache is needed, which is larger than the available KV cache memory (1.50 GiB). Based on "
    "the available memory, the estimated maximum model length is 12288. Try increasing "
    "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing "
    "`max_model_len` when initializing the engine."
)


def test_kv_cache_too_small_suggests_the_length_vllm_names() -> None:
    diagnosis = diagnose("INFO loading\n" + KV_0_32)
    assert diagnosis is not None
    assert diagnosis.suggested_max_model_len == 12288
    assert "max_model_len: 12288" in diagnosis.hint
    assert "32768" in diagnosis.cause


def test_older_kv_message_too() -> None:
    text = (
        "ValueError: The model's max seq len (131072) is larger than the maximum number of "
        "tokens that can be stored in KV cache (40960). Try increasing `gpu_memory_utilization`"
    )
    diagnosis = diagnose(text)
    assert diagnosis is not None
    assert diagnosis.suggested_max_model_len == 40960


def test_cuda_oom() -> None:
    diagnosis = diagnose("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert diagnosis is not None
    assert "out of memory" in diagnosis.cause


def test_unsupported_quantization() -> None:
    diagnosis = diagnose(
        "ValueError: The quantization method awq_marlin is not supported for the current GPU. "
        "Minimum capability: 80. Current capability: 75."
    )
    assert diagnosis is not None
    assert "quantization" in diagnosis.cause


def test_gated_and_missing_weights() -> None:
    gated = diagnose("huggingface_hub.errors.GatedRepoError: 401 Client Error.")
    assert gated is not None
    assert "gated" in gated.cause
    missing = diagnose(
        "OSError: /models/a/b/main does not appear to have a file named config.json."
    )
    assert missing is not None
    assert "missing" in missing.cause


def test_unknown_failure_has_no_made_up_diagnosis() -> None:
    assert diagnose("Segmentation fault") is None
