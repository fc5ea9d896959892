"""Profile + box → one `ContainerSpec` per engine (vLLM, and TEI when embeddings are on).

Pure: no Docker, no NVML, no files. Everything the containers need is decided here, so `plan`
can compare it and `compose export` can print it:

- vLLM flags by vLLM 0.32's own names. `--quantization` is passed only where vLLM would not pick
  the fast kernel by itself (AWQ/GPTQ INT4 → the Marlin kernels on 8.0+); FP8 checkpoints
  (compressed-tensors or Qwen's fine-grained FP8) carry their quantization config and must not
  get `--quantization fp8`, which would quantize an already-quantized checkpoint again.
- Engines listen on 0.0.0.0 *inside* their container; Docker publishes the port on 127.0.0.1 of
  the host only. The gateway is the one way in from the network.
- Weights are mounted read-only from `weights_path(models_dir, repo, revision)`; the engines run
  with `HF_HUB_OFFLINE=1`, so they never reach for the Hub, and no token is ever passed to them.
- Images: of each engine's pinned builds, the one the box's driver and cards can start
  (`appliance.engine_images`), with the environment its compatibility route needs; when none can,
  EnvironmentNotReadyError carries the driver upgrade commands. A profile's `spec.images` wins.
- GPUs are requested by UUID (stable across reboots and driver reorders), the ones the profile
  assigns. `SpecOptions(gpu_requests=False)` is the single switch that turns the requests off;
  only the tests (on machines without a GPU) use it.
- The CPU target (`spec.engine.device: cpu`): vLLM's CPU image for the host's architecture, no
  GPU request, no `--gpu-memory-utilization` (the CPU build ignores it); its KV cache is
  `VLLM_CPU_KVCACHE_SPACE` GiB of RAM (`appliance.cpu_target.kv_cache_space_gib`), and its
  entrypoint writes the AMX-permission hook of issue #22 before it becomes vLLM's server
  (`appliance.runtime.cpu_engine`). The port is still published on 127.0.0.1 only.
- SGLang (`spec.engine.kind: sglang`, issue #21) fills the same chat-engine role: the same
  container name, host port, weights mount and health wait, with SGLang's own image
  (lmsysorg/sglang, chosen by driver like vLLM's), `python3 -m sglang.launch_server` and its flag
  names at the pinned release (`sglang_command`), listening on SGLang's port 30000 inside.
- Several chat models (`spec.switching`, issue #19): each model its own vLLM container
  (`llm-appliance-<profile>-vllm-<n>` for the further ones), its own served name and host port on
  127.0.0.1, all with `--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1`, which vLLM needs for the
  /sleep, /wake_up, /collective_rpc and /is_sleeping routes (docs/features/sleep_mode.md: "only
  available when passing VLLM_SERVER_DEV_MODE=1"; "these endpoints should not be exposed to
  users"). Those routes are why the engines' ports stay on loopback: only the gateway reaches
  them, and it forwards no client to them. The further models come first in start order, and
  spec.model last, so that it is the one awake when apply is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Final, Literal

from appliance.catalog import Catalog, load_catalog
from appliance.cpu_target import kv_cache_space_gib
from appliance.engine_images import (
    ImageChoice,
    NoImageRuns,
    gpus_card_class,
    sglang_image_for,
    tei_image_for,
    vllm_image_for,
)
from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.fit import chat_gpus, tei_gpu
from appliance.hardware.box import Box, GpuInfo
from appliance.profile import EmbeddingsSpec, Profile
from appliance.runtime.cpu_engine import CONTAINER_HOOK_DIR, container_entrypoint, cpu_engine_env
from appliance.runtime.model import (
    CONTAINER_PREFIX,
    ContainerSpec,
    Healthcheck,
    Mount,
    PortBinding,
)
from appliance.vocabulary import weights_path

__all__ = [
    "CONTAINER_MODELS_DIR",
    "SGLANG_CONTAINER_PORT",
    "TEI_CONTAINER_PORT",
    "VLLM_CONTAINER_PORT",
    "SpecOptions",
    "WeightsSource",
    "container_name",
    "container_specs",
    "cpu_image_choice",
    "engine_container_port",
    "engine_image_choice",
    "sglang_command",
    "tei_command",
    "vllm_command",
    "vllm_image_choice",
]

CONTAINER_MODELS_DIR: Final = PurePosixPath("/models")
VLLM_CONTAINER_PORT: Final = 8000
SGLANG_CONTAINER_PORT: Final = 30000  # launch_server's default --port; we pass it explicitly
TEI_CONTAINER_PORT: Final = 80  # TEI's images listen on 80 by default; we say so explicitly
_INSIDE_CONTAINER: Final = "0.0.0.0"  # noqa: S104 - only inside the container; published on 127.0.0.1
# vLLM loads a 70B checkpoint for many minutes; Docker must not call it unhealthy meanwhile.
_VLLM_START_PERIOD_S: Final = 1800.0
_OFFLINE_ENV: Final = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class SpecOptions:
    """Switches that change what the specs ask of the host.

    `gpu_requests=False` drops the GPU device requests. It exists for the test suite, which runs
    the engine doubles on machines without a GPU; a real deployment never sets it.
    """

    gpu_requests: bool = True


def container_name(profile_name: str, role: str) -> str:
    return f"{CONTAINER_PREFIX}{profile_name}-{role}"


def _quantization_flags(quantization: str, gpus: Sequence[GpuInfo]) -> list[str]:
    """`--quantization`/`--dtype` for vLLM and SGLang alike: both name the INT4 Marlin kernels
    `awq_marlin`/`gptq_marlin` (sglang 0.5.21 arg_groups/choices.py QUANTIZATION_CHOICES) and
    take FP8 and the other self-describing checkpoints from their quantization_config."""
    capabilities = [g.compute_capability for g in gpus if g.compute_capability is not None]
    marlin = not capabilities or min(capabilities) >= (8, 0)
    match quantization:
        case "awq":
            return ["--quantization", "awq_marlin" if marlin else "awq"]
        case "gptq":
            return ["--quantization", "gptq_marlin" if marlin else "gptq"]
        case "bf16":
            return ["--dtype", "bfloat16"]
        case "fp16":
            return ["--dtype", "float16"]
        case _:  # fp8, mxfp4, nvfp4, int8: the checkpoint's quantization_config decides
            return []


def vllm_command(
    profile: Profile,
    box: Box,
    *,
    models_dir: PurePath = CONTAINER_MODELS_DIR,
    host: str = _INSIDE_CONTAINER,
    port: int = VLLM_CONTAINER_PORT,
) -> tuple[str, ...]:
    """vLLM's `serve` arguments (after the image's entrypoint) for this profile on this box.

    `models_dir`, `host` and `port` are where the engine sees its weights and listens; the
    defaults are the container's. Running vLLM directly on a host passes the host's.
    """
    spec = profile.spec
    model, engine = spec.model, spec.engine
    gpus = chat_gpus(profile, box)
    on_cpu = engine.device == "cpu"
    argv: list[str] = [
        "--model",
        str(weights_path(models_dir, model.repo, model.revision)),
        "--served-model-name",
        model.served_name,
        "--host",
        host,
        "--port",
        str(port),
        *_quantization_flags(model.quantization, gpus),
        "--tensor-parallel-size",
        str(engine.tensor_parallel_size),
    ]
    if not on_cpu:  # the CPU build sizes its KV cache by VLLM_CPU_KVCACHE_SPACE instead
        argv += ["--gpu-memory-utilization", f"{engine.gpu_memory_utilization:g}"]
    argv += [
        "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching",
    ]
    if engine.max_model_len is not None:
        argv += ["--max-model-len", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(engine.max_num_batched_tokens)]
    if engine.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", engine.kv_cache_dtype]
    if engine.enforce_eager:
        argv.append("--enforce-eager")
    no_p2p = engine.tensor_parallel_size > 1 and box.peer_to_peer is False
    if not on_cpu and (engine.disable_custom_all_reduce or no_p2p):
        argv.append("--disable-custom-all-reduce")
    if model.lora_adapters:
        argv += ["--enable-lora", "--lora-modules"]
        argv += [
            f"{a.name}={weights_path(models_dir, a.repo, a.revision)}" for a in model.lora_adapters
        ]
        if engine.max_loras is not None:
            argv += ["--max-loras", str(engine.max_loras)]
        if engine.max_lora_rank is not None:
            argv += ["--max-lora-rank", str(engine.max_lora_rank)]
    if spec.switching is not None:
        argv.append("--enable-sleep-mode")
    argv += engine.extra_args
    return tuple(argv)


# SGLang names fp8 KV caches by format only (fields/model.py kv_cache_dtype choices: auto,
# fp8_e5m2, fp8_e4m3, ...); vLLM's plain "fp8" is e4m3 (vllm/config/cache.py), so it maps there.
_SGLANG_KV_DTYPE: Final[dict[str, str]] = {"fp8": "fp8_e4m3"}


def sglang_command(
    profile: Profile,
    box: Box,
    *,
    models_dir: PurePath = CONTAINER_MODELS_DIR,
    host: str = _INSIDE_CONTAINER,
    port: int = SGLANG_CONTAINER_PORT,
) -> tuple[str, ...]:
    """SGLang's full command line (`python3 -m sglang.launch_server ...`) for this profile.

    Flag names are sglang 0.5.21's (python/sglang/srt/arg_groups/fields/*.py, a field `x_y` is
    `--x-y`): model.py model_path, context_length, dtype, quantization, kv_cache_dtype;
    serving.py host, port, served_model_name; parallel.py tp_size; schedule.py
    mem_fraction_static, max_running_requests; memory.py disable_radix_cache; observability.py
    enable_metrics; exec_.py disable_custom_all_reduce, disable_decode_cuda_graph,
    disable_prefill_cuda_graph (`--disable-cuda-graph` is only a deprecated spelling there).
    """
    spec = profile.spec
    model, engine = spec.model, spec.engine
    gpus = chat_gpus(profile, box)
    argv: list[str] = [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(weights_path(models_dir, model.repo, model.revision)),
        "--served-model-name",
        model.served_name,
        "--host",
        host,
        "--port",
        str(port),
        *_quantization_flags(model.quantization, gpus),
        "--tp-size",
        str(engine.tensor_parallel_size),
        "--mem-fraction-static",
        f"{engine.gpu_memory_utilization:g}",
        "--enable-metrics",
    ]
    if not engine.enable_prefix_caching:
        argv.append("--disable-radix-cache")  # SGLang's prefix cache (RadixAttention) is on
    if engine.max_model_len is not None:
        argv += ["--context-length", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        argv += ["--max-running-requests", str(engine.max_num_seqs)]
    if engine.kv_cache_dtype != "auto":
        kv = engine.kv_cache_dtype
        argv += ["--kv-cache-dtype", _SGLANG_KV_DTYPE.get(kv, kv)]
    if engine.enforce_eager:
        argv += ["--disable-decode-cuda-graph", "--disable-prefill-cuda-graph"]
    no_p2p = engine.tensor_parallel_size > 1 and box.peer_to_peer is False
    if engine.disable_custom_all_reduce or no_p2p:
        argv.append("--disable-custom-all-reduce")
    argv += engine.extra_args
    return tuple(argv)


def engine_container_port(profile: Profile) -> int:
    """Where the chat engine listens inside its container: vLLM's 8000 or SGLang's 30000."""
    return SGLANG_CONTAINER_PORT if profile.spec.engine.kind == "sglang" else VLLM_CONTAINER_PORT


def tei_command(
    embeddings: EmbeddingsSpec,
    *,
    models_dir: PurePath = CONTAINER_MODELS_DIR,
    host: str = _INSIDE_CONTAINER,
    port: int = TEI_CONTAINER_PORT,
) -> tuple[str, ...]:
    """TEI's router arguments for the embedding model."""
    assert embeddings.repo is not None  # enabled embeddings always name a repo (profile rule)
    argv = [
        "--model-id",
        str(weights_path(models_dir, embeddings.repo, embeddings.revision)),
        "--served-model-name",
        embeddings.served_name,
        "--hostname",
        host,
        "--port",
        str(port),
    ]
    for flag, value in (
        ("--max-batch-tokens", embeddings.max_batch_tokens),
        ("--max-client-batch-size", embeddings.max_client_batch_size),
        ("--max-concurrent-requests", embeddings.max_concurrent_requests),
        ("--pooling", embeddings.pooling),
    ):
        if value is not None:
            argv += [flag, str(value)]
    argv += embeddings.extra_args
    return tuple(argv)


def _device_ids(
    gpus: Sequence[GpuInfo], options: SpecOptions
) -> tuple[str, ...] | Literal["all"] | None:
    if not options.gpu_requests or not gpus:
        return None
    return tuple(g.uuid for g in gpus)


WeightsSource = Callable[[Path], Path]


def _same(path: Path) -> Path:
    return path


def _weights_mount(models_dir: Path, repo: str, revision: str, source: WeightsSource) -> Mount:
    return Mount(
        source=str(source(weights_path(models_dir, repo, revision))),
        target=str(weights_path(CONTAINER_MODELS_DIR, repo, revision)),
        read_only=True,
    )


def _refuse_old_driver(box: Box, refusal: NoImageRuns) -> EnvironmentNotReadyError:
    from appliance.engine_images import UPGRADE_BRANCH
    from appliance.hardware.findings import driver_upgrade_fix

    return EnvironmentNotReadyError(
        refusal.what,
        hint=driver_upgrade_fix(box.host, UPGRADE_BRANCH)
        + "\n(or pin an image yourself in the profile's spec.images)",
    )


def vllm_image_choice(
    profile: Profile, box: Box, catalog: Catalog | None = None
) -> ImageChoice | None:
    """The vLLM build this box's driver and cards run (None: the profile pins its own image).

    EnvironmentNotReadyError, with the driver upgrade commands, when no pinned build starts.
    """
    if profile.spec.images.vllm:
        return None
    if profile.spec.engine.device == "cpu":
        return cpu_image_choice(box, catalog)
    chosen = chat_gpus(profile, box) if box.gpus else ()
    choice = vllm_image_for(box.driver_version, gpus_card_class(chosen, catalog), catalog)
    if isinstance(choice, NoImageRuns):
        raise _refuse_old_driver(box, choice)
    return choice


def engine_image_choice(
    profile: Profile, box: Box, catalog: Catalog | None = None
) -> ImageChoice | None:
    """The chat engine's build for this box: vLLM's (`vllm_image_choice`) or SGLang's (None:
    the profile pins its own image). EnvironmentNotReadyError when no pinned build starts."""
    if profile.spec.engine.kind != "sglang":
        return vllm_image_choice(profile, box, catalog)
    if profile.spec.images.sglang:
        return None
    chosen = chat_gpus(profile, box) if box.gpus else ()
    choice = sglang_image_for(box.driver_version, gpus_card_class(chosen, catalog), catalog)
    if isinstance(choice, NoImageRuns):
        raise _refuse_old_driver(box, choice)
    return choice


def cpu_image_choice(box: Box, catalog: Catalog | None = None) -> ImageChoice:
    """vLLM's CPU image of the pinned release for the host's architecture (x86_64 when the
    host's is unknown); BadInputError on an architecture vLLM publishes no CPU image for."""
    cpu = (catalog or load_catalog()).images.vllm.cpu
    arch = box.host.architecture or "x86_64"
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    tag = cpu.tags.get(arch)
    if tag is None:
        raise BadInputError(
            f"vLLM publishes no CPU image for {arch} (only {', '.join(sorted(cpu.tags))})",
            hint="pin an image you built for this machine in spec.images.vllm",
        )
    why = f"vLLM's CPU image for {arch}: no GPU, no driver"
    return ImageChoice(f"{cpu.repository}:{tag}", "none", "native", why)


def _vllm_spec(
    profile: Profile,
    box: Box,
    catalog: Catalog,
    options: SpecOptions,
    source: WeightsSource,
    *,
    name: str = "vllm",
) -> ContainerSpec:
    spec = profile.spec
    choice = vllm_image_choice(profile, box, catalog)
    image = spec.images.vllm or (choice.image if choice else "")
    compat_env = choice.environment if choice else {}
    models_dir = spec.storage.models_dir
    mounts = [_weights_mount(models_dir, spec.model.repo, spec.model.revision, source)]
    mounts += [
        _weights_mount(models_dir, a.repo, a.revision, source) for a in spec.model.lora_adapters
    ]
    port = spec.ports.vllm
    on_cpu = spec.engine.device == "cpu"
    cpu_env: dict[str, str] = {}
    if on_cpu:
        memory = box.host.memory_total_bytes
        kv_gib = kv_cache_space_gib(memory, spec.engine.cpu_kv_cache_gib)
        cpu_env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), **cpu_engine_env(CONTAINER_HOOK_DIR)}
    # The sleep routes exist only in vLLM's development mode (see the module docstring).
    sleep_env = {"VLLM_SERVER_DEV_MODE": "1"} if spec.switching is not None else {}
    return ContainerSpec(
        role="vllm",
        name=container_name(profile.metadata.name, name),
        image=image,
        entrypoint=container_entrypoint() if on_cpu else None,
        command=vllm_command(profile, box),
        environment={
            **_OFFLINE_ENV,
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **compat_env,
            **cpu_env,
            **sleep_env,
        },
        ports=(PortBinding(container_port=VLLM_CONTAINER_PORT, host_port=port),),
        mounts=tuple(mounts),
        gpu_device_ids=_device_ids(chat_gpus(profile, box), options),
        ipc_mode="host",  # tensor parallel workers share memory through /dev/shm
        healthcheck=_python_healthcheck(VLLM_CONTAINER_PORT, "/health"),
        health_url=f"http://127.0.0.1:{port}/health",
        profile=profile.metadata.name,
    )


def _python_healthcheck(container_port: int, path: str) -> Healthcheck:
    """Docker's probe of a chat engine, run inside its container with the image's own Python
    (the vLLM and SGLang images carry no curl)."""
    probe = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{container_port}{path}', timeout=4)"
    )
    return Healthcheck(
        test=("python3", "-c", probe),
        interval_s=10,
        timeout_s=5,
        retries=3,
        start_period_s=_VLLM_START_PERIOD_S,
    )


def _sglang_spec(
    profile: Profile, box: Box, catalog: Catalog, options: SpecOptions, source: WeightsSource
) -> ContainerSpec:
    """SGLang in the chat engine's role: same name, host port, mounts and GPUs as vLLM's."""
    spec = profile.spec
    choice = engine_image_choice(profile, box, catalog)
    image = spec.images.sglang or (choice.image if choice else "")
    models_dir = spec.storage.models_dir
    port = spec.ports.vllm
    health = catalog.images.sglang.health_path
    return ContainerSpec(
        role="vllm",
        name=container_name(profile.metadata.name, "vllm"),
        image=image,
        # The command is the whole argv: SGLang's image starts no server by itself (an NVIDIA
        # base entrypoint, where there is one, execs its arguments), so the image's is kept.
        entrypoint=None,
        command=sglang_command(profile, box),
        environment={
            **_OFFLINE_ENV,
            "SGLANG_DISABLE_REQUEST_LOGGING": "1",
            "DO_NOT_TRACK": "1",
            **(choice.environment if choice else {}),
        },
        ports=(PortBinding(container_port=SGLANG_CONTAINER_PORT, host_port=port),),
        mounts=(_weights_mount(models_dir, spec.model.repo, spec.model.revision, source),),
        gpu_device_ids=_device_ids(chat_gpus(profile, box), options),
        ipc_mode="host",  # tensor parallel workers share memory through /dev/shm
        healthcheck=_python_healthcheck(SGLANG_CONTAINER_PORT, health),
        health_url=f"http://127.0.0.1:{port}{health}",
        profile=profile.metadata.name,
    )


def _tei_spec(
    profile: Profile, box: Box, catalog: Catalog, options: SpecOptions, source: WeightsSource
) -> ContainerSpec:
    spec = profile.spec
    embeddings = spec.embeddings
    assert embeddings is not None
    assert embeddings.repo is not None
    gpu = tei_gpu(profile, box)
    image = spec.images.tei
    if not image:
        choice = tei_image_for(
            gpu.compute_capability if gpu else None,
            box.driver_version,
            gpus_card_class([gpu] if gpu else [], catalog),
            catalog,
        )
        if isinstance(choice, NoImageRuns):
            raise _refuse_old_driver(box, choice)
        image = choice.image
    port = spec.ports.tei
    return ContainerSpec(
        role="tei",
        name=container_name(profile.metadata.name, "tei"),
        image=image,
        command=tei_command(embeddings),
        environment=dict(_OFFLINE_ENV),
        ports=(PortBinding(container_port=TEI_CONTAINER_PORT, host_port=port),),
        mounts=(
            _weights_mount(spec.storage.models_dir, embeddings.repo, embeddings.revision, source),
        ),
        gpu_device_ids=_device_ids([gpu] if gpu else [], options),
        ipc_mode="host",
        # TEI's images carry neither curl nor Python, so there is no probe Docker could run
        # inside them; readiness is `health_url`, polled from the host by apply and status.
        healthcheck=None,
        health_url=f"http://127.0.0.1:{port}/health",
        profile=profile.metadata.name,
    )


def container_specs(
    profile: Profile,
    box: Box,
    *,
    catalog: Catalog | None = None,
    options: SpecOptions | None = None,
    weights_source: WeightsSource | None = None,
) -> tuple[ContainerSpec, ...]:
    """The containers this profile runs on this box, in start order (vLLM first, then TEI).

    vLLM starts first because it sizes its KV cache from the GPU memory free when it starts;
    TEI's share is what `gpu_memory_utilization` leaves.

    `weights_source` maps a weights directory (`weights_path`, a revision such as `main`) to the
    host directory to mount. Apply passes one that follows the weights module's revision link
    to its `<sha>` directory, so pulling a new commit of `main` changes the spec and the plan
    replaces the engine; the path inside the container (and so the command line) stays put.
    """
    catalog = catalog or load_catalog()
    options = options or SpecOptions()
    source = weights_source or _same
    chat = _sglang_spec if profile.spec.engine.kind == "sglang" else _vllm_spec
    switching = profile.spec.switching
    further = switching.models if switching else ()
    specs = [
        _vllm_spec(profile.as_switched(m), box, catalog, options, source, name=f"vllm-{n}")
        for n, m in enumerate(further, start=2)
    ]
    specs.append(chat(profile, box, catalog, options, source))
    if profile.spec.embeddings_enabled:
        specs.append(_tei_spec(profile, box, catalog, options, source))
    return tuple(specs)
