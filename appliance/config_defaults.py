"""What transformers fills in when a model's `config.json` leaves a field out.

vLLM reads `config.json` through transformers' `AutoConfig`, so a field the file omits takes the
default of the model type's config class. The Hub ships such files: google/gemma-3-27b-it's
`text_config` has no `vocab_size`, `max_position_embeddings`, `tie_word_embeddings` or
`sliding_window_pattern`. Sizing the checkpoint needs the same numbers vLLM will use.

Each row is the model type's declared `__init__`/field defaults in transformers 5.19.0 (the version
the pinned vLLM 0.32.0 installs), file `src/transformers/models/<dir>/configuration_<dir>.py`,
line numbers as of that release. Only literal defaults are listed: a field whose default is
computed (Llama's `num_key_value_heads = num_attention_heads`, `head_dim = hidden_size //
num_attention_heads`) is left to `local_model`, which computes it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# model_type → {field: default}
_TABLE: dict[str, dict[str, Any]] = {
    # transformers 5.19.0 models/gemma3/configuration_gemma3.py L77-L97 (Gemma3TextConfig
    # fields); its L109 `kwargs.get("sliding_window_pattern", 6)` builds layer_types: every 6th
    # layer is global.
    "gemma3_text": {
        "vocab_size": 262_208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131_072,
        "tie_word_embeddings": True,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
    },
    # transformers 5.19.0 models/gemma2/configuration_gemma2.py L68-L88 (Gemma2Config)
    "gemma2": {
        "vocab_size": 256_000,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "sliding_window": 4096,
    },
    # transformers 5.19.0 models/llama/configuration_llama.py L64-L84 (LlamaConfig; kv heads and
    # head_dim computed)
    "llama": {
        "vocab_size": 32_000,
        "hidden_size": 4096,
        "intermediate_size": 11_008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    # transformers 5.19.0 models/qwen2/configuration_qwen2.py L61-L75 (Qwen2Config)
    "qwen2": {
        "vocab_size": 151_936,
        "hidden_size": 4096,
        "intermediate_size": 22_016,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 32_768,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": None,  # declared 4096; __post_init__ drops it without use_sliding_window
    },
    # transformers 5.19.0 models/qwen3/configuration_qwen3.py L62-L78 (Qwen3Config): head_dim is
    # declared, 128
    "qwen3": {
        "vocab_size": 151_936,
        "hidden_size": 4096,
        "intermediate_size": 22_016,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "head_dim": 128,
        "max_position_embeddings": 32_768,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": None,  # declared 4096; __post_init__ drops it without use_sliding_window
    },
    # transformers 5.19.0 models/qwen3_moe/configuration_qwen3_moe.py L85-L105 (Qwen3MoeConfig)
    "qwen3_moe": {
        "vocab_size": 151_936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32_768,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": None,  # declared 4096; __post_init__ drops it without use_sliding_window
        "moe_intermediate_size": 768,
        "num_experts_per_tok": 8,
        "num_experts": 128,
    },
    # transformers 5.19.0 models/mistral/configuration_mistral.py L63-L80 (MistralConfig; head_dim
    # computed)
    "mistral": {
        "vocab_size": 32_000,
        "hidden_size": 4096,
        "intermediate_size": 14_336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "tie_word_embeddings": False,
        "sliding_window": 4096,
    },
    # transformers 5.19.0 models/mixtral/configuration_mixtral.py L67-L86 (MixtralConfig;
    # sliding_window None)
    "mixtral": {
        "vocab_size": 32_000,
        "hidden_size": 4096,
        "intermediate_size": 14_336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "tie_word_embeddings": False,
        "num_experts_per_tok": 2,
        "num_local_experts": 8,
    },
    # transformers 5.19.0 models/gpt_oss/configuration_gpt_oss.py L50-L66 (GptOssConfig)
    "gpt_oss": {
        "num_hidden_layers": 36,
        "num_local_experts": 128,
        "vocab_size": 201_088,
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "head_dim": 64,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "sliding_window": 128,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131_072,
        "num_experts_per_tok": 4,
    },
    # transformers 5.19.0 models/llama4/configuration_llama4.py L140-L169 (Llama4TextConfig)
    "llama4_text": {
        "vocab_size": 202_048,
        "hidden_size": 5120,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16_384,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 4096 * 32,
        "tie_word_embeddings": False,
        "num_experts_per_tok": 1,
        "num_local_experts": 16,
        "attention_chunk_size": 8192,
    },
    # transformers 5.19.0 models/deepseek_v2/configuration_deepseek_v2.py L76-L120
    # (DeepseekV2Config)
    "deepseek_v2": {
        "vocab_size": 102_400,
        "hidden_size": 4096,
        "intermediate_size": 11_008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "first_k_dense_replace": 0,
        "kv_lora_rank": 512,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "moe_intermediate_size": 1407,
    },
}

# A multimodal config's `text_config` without its own model_type is this type's text model.
TEXT_MODEL_TYPE: Mapping[str, str] = MappingProxyType(
    {"gemma3": "gemma3_text", "llama4": "llama4_text"}
)

CONFIG_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {key: MappingProxyType(row) for key, row in _TABLE.items()}
)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with the fields it omits filled from its model type's transformers defaults.

    A field present in the file wins, even when it is null (transformers keeps an explicit None).
    """
    filled = dict(config)
    for name, value in CONFIG_DEFAULTS.get(str(config.get("model_type")), {}).items():
        filled.setdefault(name, value)
    return filled
