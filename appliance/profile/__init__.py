"""The profile: one YAML file that is the whole contract for a box.

A profile says which model the box serves and how (vLLM's flags by vLLM's names), which embedding
model runs beside it in Text Embeddings Inference, which images and ports are used, how the gateway
authenticates and falls back to a remote API, and when the monitor raises alerts. `plan`, `apply`,
the gateway, the monitor and the TUI all read the same `Profile` object, so everything a later stage
would trip over is refused here, at load time, with the file, the line, the field and what to write
instead.

What must stay true:

- Pure: the only IO is reading the one file `load_profile` is given (size checked before reading).
  Nothing here touches Docker, NVML, the Hub or the network.
- Strict: unknown keys, wrong types (`"8"` is not a number, `yes` is not a boolean), impossible
  combinations and literal secrets are errors. Every error is collected, not only the first, and is
  a `ProfileError` (exit code 2) -- never a traceback.
- YAML is read with PyYAML's SafeLoader machinery but with YAML 1.2 core scalars: only
  `true`/`false` are booleans, so `mode: off` is the string "off" and `revision: no` is "no",
  and there are no timestamps or sexagesimal numbers. Anchors and aliases are refused outright
  (alias bombs).
- Secrets never live in the file: the remote API key is named by `api_key_env` or `api_key_file`.
- `dump_profile` writes only what differs from the defaults, in schema order, and its output parses
  back to an equal profile. The JSON Schema committed in `profiles/profile.schema.json` is generated
  from these models (`python -m appliance.profile --write-schema`).

The package, one layer a module: `values` (value types and pass-through flags), `schema` (the
models), `problems` (a problem and the error that carries them), `yaml_text` (the line-tracking
YAML reader), `explain` (pydantic's errors as located problems) and `io` (parse, load, dump,
schema).
"""

from __future__ import annotations

from appliance.profile.io import dump_profile, json_schema, load_profile, parse_profile, schema_text
from appliance.profile.problems import ProfileError, ProfileProblem
from appliance.profile.schema import (
    AlertThresholds,
    EmbeddingsSpec,
    EngineSpec,
    FallbackSpec,
    GatewaySpec,
    ImagesSpec,
    LoraAdapter,
    Metadata,
    ModelSpec,
    MonitoringSpec,
    PortsSpec,
    Profile,
    RemoteApi,
    Spec,
    StorageSpec,
    SwitchedModelSpec,
    SwitchingSpec,
    Timeouts,
    TlsSpec,
)
from appliance.profile.values import API_VERSION, KIND, MAX_PROFILE_BYTES
from appliance.vocabulary import Device

__all__ = [
    "API_VERSION",
    "KIND",
    "MAX_PROFILE_BYTES",
    "AlertThresholds",
    "Device",
    "EmbeddingsSpec",
    "EngineSpec",
    "FallbackSpec",
    "GatewaySpec",
    "ImagesSpec",
    "LoraAdapter",
    "Metadata",
    "ModelSpec",
    "MonitoringSpec",
    "PortsSpec",
    "Profile",
    "ProfileError",
    "ProfileProblem",
    "RemoteApi",
    "Spec",
    "StorageSpec",
    "SwitchedModelSpec",
    "SwitchingSpec",
    "Timeouts",
    "TlsSpec",
    "dump_profile",
    "json_schema",
    "load_profile",
    "parse_profile",
    "schema_text",
]
