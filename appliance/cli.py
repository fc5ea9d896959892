"""`appliance …`: the headless face of llm-appliance.

Thin on purpose: parse arguments, call the core, print. Data goes to stdout (`--json` where it
makes sense), diagnostics to stderr, and the process exits with an `ExitCode`. Heavy libraries
(pydantic models, docker-py, pynvml, Textual) are imported inside the command that needs them,
so `appliance --help` starts fast over SSH; `tests/unit/test_imports.py` keeps it that way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from appliance import __version__
from appliance import cli_options as opt
from appliance.errors import ApplianceError, BadInputError, ExitCode

DEFAULT_MODELS_DIR = Path("/var/lib/llm-appliance/models")
DEFAULT_STATE_DIR = Path("/var/lib/llm-appliance/state")

log = logging.getLogger("appliance")

Handler = Callable[[argparse.Namespace], ExitCode]
# The `appliance COMMAND` table that each _add_* function fills.
_Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def state_dir() -> Path:
    """Where the appliance keeps its own logs and small state files for this user."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llm-appliance"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as `BadInputError` (exit 2) instead of exiting itself."""

    def error(self, message: str) -> NoReturn:
        raise BadInputError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


# ---------------------------------------------------------------------------------- commands


def _cmd_detect(args: argparse.Namespace) -> ExitCode:
    from appliance.hardware import detect_box, render_box

    box = detect_box(simulate=args.simulate, models_dir=args.models_dir)
    if args.json:
        print(box.model_dump_json(indent=2))
    else:
        print(render_box(box))
    if args.check:
        blockers = box.serving_blockers()
        if blockers:
            for finding in blockers:
                print(f"cannot serve: {finding.what}\n  → {finding.fix}", file=sys.stderr)
            return ExitCode.ENVIRONMENT
    return ExitCode.OK


def _cmd_validate(args: argparse.Namespace) -> ExitCode:
    from appliance.profile import ProfileError, load_profile

    status = ExitCode.OK
    for path in args.files:
        try:
            profile = load_profile(path)
        except ProfileError as error:
            print(error.render(), file=sys.stderr)
            status = ExitCode.BAD_INPUT
        else:
            print(f"{path}: ok ({profile.metadata.name})")
    return status


def _monitor_samplers(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The samplers, monitor config and clock for `status`: simulated, or a profile's services."""
    from appliance.monitor.monitor import MonitorConfig
    from appliance.monitor.status import profile_samplers, simulated

    if args.simulate:
        from appliance.hardware.simulate import catalog_name

        samplers, clock = simulated(catalog_name(args.simulate))
        return samplers, MonitorConfig(), clock
    if args.profile is None:
        raise BadInputError(
            "status needs the profile that was applied (or --simulate NAME)",
            hint="appliance status profiles/my-box.yaml",
        )
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    return (
        profile_samplers(profile, runtime=_runtime_source(profile.metadata.name)),
        (MonitorConfig.from_profile(profile)),
        None,
    )


def _runtime_source(profile_name: str) -> Any:
    """Container states and restart counts from the Docker engine, as the TUI's Monitor gets
    them (a tick where the engine does not answer shows none)."""
    from appliance.monitor.status import DockerRuntime

    return DockerRuntime(profile_name)


def _cmd_status(args: argparse.Namespace) -> ExitCode:
    if args.profile is None and not args.simulate:
        if args.watch or args.check:
            raise BadInputError(
                "--watch and --check need the profile (its ports and alert thresholds)",
                hint="appliance status PROFILE --watch",
            )
        return _container_status(args)
    from appliance.monitor.render import render_status
    from appliance.monitor.status import check_status, sample_status, watch_status

    samplers, config, clock = _monitor_samplers(args)
    if args.watch and not sys.stdout.isatty():
        # Into a file or a pipe: one frame per interval, as `scrape` prints, not a live redraw.
        watch_status(samplers, _frame_printer(args.json), config=config, clock=clock)
        return ExitCode.OK
    if args.watch:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(stderr=False)
        with Live(console=console, auto_refresh=False, screen=False) as live:

            def redraw(snapshot: Any, history: Any) -> None:
                live.update(Text(render_status(snapshot, history)), refresh=True)

            watch_status(samplers, redraw, config=config, clock=clock)
        return ExitCode.OK
    if args.check:
        snapshot = check_status(samplers, config=config, clock=clock)
    else:
        snapshot = sample_status(samplers, config=config, clock=clock)
    print(snapshot.model_dump_json(indent=2) if args.json else render_status(snapshot))
    return ExitCode.OK


def _frame_printer(as_json: bool) -> Callable[[Any, Any], None]:
    """A monitor callback that prints each snapshot as it comes: a frame, or a JSON line."""
    from appliance.monitor.render import render_status

    def show(snapshot: Any, history: Any) -> None:
        print(snapshot.model_dump_json() if as_json else render_status(snapshot, history))
        sys.stdout.flush()

    return show


def _cmd_scrape(args: argparse.Namespace) -> ExitCode:
    from appliance.monitor.monitor import MonitorConfig
    from appliance.monitor.status import url_samplers, watch_status

    watch_status(
        url_samplers(args.urls),
        _frame_printer(args.json),
        count=args.count,
        config=MonitorConfig.for_interval(args.interval),
    )
    return ExitCode.OK


def _cmd_estimate(args: argparse.Namespace) -> ExitCode:
    from appliance.local_model import resolve_model
    from appliance.recommend import (
        DoesNotFitError,
        estimate_for,
        estimate_json,
        gpu_target_from_box,
        render_estimate,
        resolve_gpu,
    )
    from appliance.sizing import PINNED_VLLM_VERSION, EngineFlags

    model = resolve_model(args.model, args.quantization)
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


def _estimate_cpu(args: argparse.Namespace, model: Any) -> ExitCode:
    """`estimate --device cpu`: the model on this machine's (or a simulated box's) CPU target,
    in RAM terms."""
    from appliance.cpu_target import cpu_estimate_json, render_cpu_estimate
    from appliance.hardware import detect_box
    from appliance.recommend import estimate_cpu_for

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
    from appliance.recommend import Workload, recommend, render_recommendation

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
    if args.model is None:
        recommendation = recommend(box, workload)
    else:  # one Hub repo, ranked against its own options; what quantising it would give
        from appliance.local_model import hub_candidates
        from appliance.recommend import gpu_target_from_box, would_need_lines

        hub = hub_candidates(args.model)
        recommendation = recommend(box, workload, [hub.model])
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


def _cmd_cost(args: argparse.Namespace) -> ExitCode:
    from appliance.cost import (
        api_for_profile,
        cost_for_window,
        cost_inputs_from,
        load_cost_inputs,
        load_list_prices,
        render_cost,
    )
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    prices = load_list_prices(args.prices)
    base = load_cost_inputs(args.inputs) if args.inputs is not None else profile.spec.cost
    inputs = cost_inputs_from(
        base,
        gpu_cost_per_hour=args.gpu_cost_per_hour,
        purchase_price=args.purchase_price,
        amortisation_months=args.amortisation_months,
        electricity_per_kwh=args.electricity_per_kwh,
        operations_overhead_pct=args.overhead_pct,
        api=args.api or (None if base is not None and base.api else api_for_profile(profile)),
    )
    report = cost_for_window(
        profile.spec.storage.state_dir, inputs, window=args.window, prices=prices
    )
    print(report.model_dump_json(indent=2) if args.json else render_cost(report))
    return ExitCode.OK


def _cmd_export(args: argparse.Namespace) -> ExitCode:
    from appliance.profile import load_profile

    if args.output is not None:  # a directory for k8s, a file for the others
        convert = opt.output_dir if args.target == "k8s" else opt.output_file
        try:
            args.output = convert(args.output)
        except argparse.ArgumentTypeError as error:
            raise BadInputError(
                f"-o/--output: {error}", hint="see `appliance export --help`"
            ) from None

    if args.target == "grafana":
        from appliance.exports.grafana import grafana_export

        text = grafana_export(output=args.output)
    elif args.target == "prometheus":
        from appliance.exports.prometheus import prometheus_export

        profile = load_profile(args.profile) if args.profile is not None else None
        text = prometheus_export(profile, output=args.output)
    else:
        from appliance.exports.k8s import box_for_export, k8s_export

        if args.profile is None or args.output is None:
            raise BadInputError(
                "export k8s needs a profile and an output directory",
                hint="appliance export k8s profiles/h100-70b-fp8.yaml -o k8s/",
            )
        profile = load_profile(args.profile)
        written = k8s_export(
            profile, box_for_export(profile, args.simulate), args.output, fmt=args.format
        )
        for path in written:
            print(path)
        return ExitCode.OK
    if args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {args.output}", file=sys.stderr)
    return ExitCode.OK


class _ByteProgress:
    """Download progress on stderr (bytes, rate, ETA), one bar per repository.

    Reports arrive from the download's worker threads; rich's Progress takes its own lock.
    """

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _ByteProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def __call__(self, report: Any) -> None:
        """A weights `DownloadProgress` report."""
        self.update(report.repo, report.bytes_done, report.bytes_total, report.phase)

    def update(self, key: str, done: int, total: int | None, phase: str) -> None:
        # Bars start with the first report, so a prompt before any transfer is left alone.
        self._progress.start()
        task = self._tasks.get(key)
        if task is None:
            task = self._progress.add_task(key, total=total)
            self._tasks[key] = task
        self._progress.update(task, completed=done, total=total, description=f"{key} ({phase})")

    def note(self, text: str) -> None:
        """A line of text above the bars."""
        self._progress.console.print(text, highlight=False, markup=False)


def _cancellable(work: Callable[[threading.Event], Any]) -> Any:
    """Run `work(cancel)` in a thread; Ctrl-C sets `cancel` and waits for it to stop cleanly."""
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work(cancel)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread below
            outcome["error"] = error

    thread = threading.Thread(target=target, name="appliance-work", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        print("\ncancelling; what arrived is kept and the next run resumes", file=sys.stderr)
        cancel.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _import_error(error: OSError, source: Path, models_dir: Path) -> ApplianceError:
    """An OS error during `weights import` as one line: a full disk, or a file it may not use.

    The import copies into a staging directory that it removes on any failure, so nothing half
    copied is left behind; the message says so.
    """
    import errno

    from appliance.errors import EnvironmentNotReadyError

    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentNotReadyError(
            f"the disk under {models_dir} filled up while importing {source}{where}; "
            "what was copied so far is removed",
            hint="free some space (appliance weights list / rm) or use a larger --models-dir",
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return EnvironmentNotReadyError(
            f"cannot import {source}: permission denied{where}",
            hint=f"run as a user that can read {source} and write {models_dir} (e.g. with sudo)",
        )
    return EnvironmentNotReadyError(
        f"cannot import {source}: {error.strerror or error}{where}",
        hint=f"check {source} and the disk under {models_dir}, then import again",
    )


def _cmd_weights(args: argparse.Namespace) -> ExitCode:
    from appliance import weights

    models_dir: Path = args.models_dir_given or DEFAULT_MODELS_DIR
    if args.action == "list":
        installed = weights.list_weights(models_dir, _profiles(args.profiles))
        if args.json:
            print(json.dumps([item.to_json() for item in installed], indent=2))
        else:
            for item in installed:
                used = f"  used by {', '.join(item.used_by)}" if item.used_by else ""
                size = item.size_bytes / 2**30
                print(f"{item.repo}@{item.revision}  {item.sha[:12]}  {size:.2f} GiB{used}")
            if not installed:
                print(f"no weights under {models_dir}", file=sys.stderr)
        return ExitCode.OK
    if args.action == "rm":
        removed = weights.remove_weights(
            models_dir, args.repo, _profiles(args.profiles), mounted_by=_running_mounts()
        )
        for item in removed:
            print(f"removed {item.repo}@{item.revision} ({item.sha[:12]})")
        return ExitCode.OK
    if args.action == "import":
        repo, revision = weights.parse_repo_ref(args.as_repo)
        try:
            with _ByteProgress() as progress:
                installed = _cancellable(
                    lambda cancel: weights.import_weights(
                        args.path, repo, revision, models_dir=models_dir,
                        on_progress=progress, cancel=cancel,
                    )
                )  # fmt: skip
        except OSError as error:
            raise _import_error(error, args.path, models_dir) from None
        print(f"{installed.repo}@{installed.revision} -> {installed.path}")
        return ExitCode.OK
    token = weights.resolve_token(args.token_file)
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") or target.is_file():
        from appliance.profile import load_profile

        profile = load_profile(target)
        with _ByteProgress() as progress:
            pulled = _cancellable(
                lambda cancel: weights.pull_profile(
                    profile, models_dir=args.models_dir_given, token=token,
                    on_progress=progress, cancel=cancel,
                )
            )  # fmt: skip
    else:
        with _ByteProgress() as progress:
            pulled = [
                _cancellable(
                    lambda cancel: weights.pull_weights(
                        args.target, args.revision or "main", models_dir=models_dir,
                        token=token, on_progress=progress, cancel=cancel,
                    )
                )
            ]  # fmt: skip
    for item in pulled:
        print(f"{item.repo}@{item.revision} ({item.sha[:12]}) -> {item.path}")
    return ExitCode.OK


def _running_mounts() -> tuple[tuple[str, str], ...]:
    """What the running engines mount, so `weights rm` spares it; () when Docker is not up."""
    from appliance.errors import EnvironmentNotReadyError
    from appliance.runtime.apply import weights_mounts
    from appliance.runtime.docker import DockerEngine

    try:
        engine = DockerEngine()
    except EnvironmentNotReadyError as error:
        print(f"note: {error.message}; not checking what containers mount", file=sys.stderr)
        return ()
    try:
        return weights_mounts(engine)
    finally:
        engine.close()


def _profiles(paths: Sequence[Path]) -> list[Any]:
    from appliance.profile import load_profile

    return [load_profile(path) for path in paths]


def _box_for(args: argparse.Namespace, profile: Any) -> Any:
    from appliance.hardware import detect_box

    return detect_box(
        simulate=getattr(args, "simulate", None), models_dir=profile.spec.storage.models_dir
    )


def _cmd_plan(args: argparse.Namespace) -> ExitCode:
    from appliance.errors import EnvironmentNotReadyError
    from appliance.profile import load_profile
    from appliance.runtime.apply import plan_profile
    from appliance.runtime.docker import DockerEngine

    profile = load_profile(args.profile)
    box = _box_for(args, profile)
    try:
        engine: DockerEngine | None = DockerEngine()
    except EnvironmentNotReadyError as error:
        if not args.simulate:
            raise
        # A simulated box is usually planned on a laptop with no engine: plan from nothing.
        print(f"note: {error.message}; planning against an empty box", file=sys.stderr)
        engine = None
    try:
        plan = plan_profile(profile, box, engine)  # refuses (exit 4) what vLLM would refuse
    finally:
        if engine is not None:
            engine.close()
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.render())
    return ExitCode.OK


def _cmd_apply(args: argparse.Namespace) -> ExitCode:
    from appliance.deploy import deploy_profile
    from appliance.profile import load_profile
    from appliance.runtime.apply import ApplyEvent
    from appliance.runtime.docker import DockerEngine
    from appliance.runtime.plan import Plan

    profile = load_profile(args.profile)
    box = _box_for(args, profile)

    progress = _ByteProgress()

    def show(event: ApplyEvent) -> None:
        if event.pull is not None:
            pull = event.pull
            progress.update(pull.image, pull.downloaded_bytes, pull.total_bytes, "pull")
        else:
            role = f"[{event.role}] " if event.role else ""
            progress.note(f"{event.step}: {role}{event.message}")

    def confirm(plan: Plan) -> bool:
        print(plan.render(), file=sys.stderr)
        if plan.is_noop or args.yes or not sys.stdin.isatty():
            return True
        answer = input("Apply these changes? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    engine = DockerEngine()
    try:
        with progress:
            result = deploy_profile(
                profile,
                box,
                engine,
                source=args.profile,
                confirm=confirm,
                progress=show,
                weights_progress=progress,
            )
    finally:
        engine.close()
    gateway = result.gateway_line()
    if gateway is not None and (result.gateway is None or result.gateway.changed):
        print(gateway, file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif not result.applied:
        print("nothing applied", file=sys.stderr)
    return ExitCode.OK


def _cmd_down(args: argparse.Namespace) -> ExitCode:
    from appliance.runtime.apply import down
    from appliance.runtime.docker import DockerEngine

    profile = None
    if args.purge_weights:
        if args.profile is None:
            raise BadInputError(
                "--purge-weights needs the profile whose weights to remove",
                hint="appliance down PROFILE --purge-weights",
            )
        from appliance.profile import load_profile

        profile = load_profile(args.profile)
    engine = DockerEngine()
    try:
        removed = down(engine, progress=None)
    finally:
        engine.close()
    for container in removed:
        print(f"removed {container.name} ({container.role})")
    if profile is not None:
        from appliance import weights

        for ref in weights.profile_weights(profile):
            for item in weights.remove_weights(profile.spec.storage.models_dir, ref.repo):
                print(f"removed weights {item.repo}@{item.revision}")
    return ExitCode.OK


def _cmd_logs(args: argparse.Namespace) -> ExitCode:
    from appliance.runtime.apply import follow_service_logs, service_logs
    from appliance.runtime.docker import DockerEngine

    engine = DockerEngine()
    try:
        if not args.follow:
            sys.stdout.write(service_logs(engine, args.service, tail=args.tail))
            return ExitCode.OK
        stop = threading.Event()
        try:
            for line in follow_service_logs(engine, args.service, stop, tail=args.tail):
                print(line, flush=True)
        except KeyboardInterrupt:
            stop.set()
    finally:
        engine.close()
    return ExitCode.OK


def _cmd_compose(args: argparse.Namespace) -> ExitCode:
    from appliance.profile import load_profile
    from appliance.runtime.compose import compose_export

    profile = load_profile(args.profile)
    text = compose_export(
        profile, _box_for(args, profile), box_name=args.simulate, output=args.output
    )
    if args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {args.output}", file=sys.stderr)
    return ExitCode.OK


def _container_status(args: argparse.Namespace) -> ExitCode:
    """`appliance status` without a profile: the managed containers, found by their labels."""
    from appliance.runtime.apply import status
    from appliance.runtime.docker import DockerEngine

    engine = DockerEngine()
    try:
        services = status(engine)
    finally:
        engine.close()
    if args.json:
        print(json.dumps([service.to_json() for service in services], indent=2))
        return ExitCode.OK
    if not services:
        print("no llm-appliance containers on this box (appliance apply PROFILE starts them)")
    for service in services:
        ready = {True: "ready", False: "NOT READY", None: "-"}[service.ready]
        ports = ", ".join(f"127.0.0.1:{h}" for h in service.host_ports.values())
        print(
            f"{service.role:8} {service.name:32} {service.state:10} {ready:10} "
            f"restarts {service.restart_count}  {ports}  ({service.profile})"
        )
    return ExitCode.OK


def _gateway_config(args: argparse.Namespace) -> Any:
    """The gateway's configuration from `--profile` (or $LLM_APPLIANCE_PROFILE)."""
    from appliance.applied import applied_profile_path
    from appliance.gateway.config import GatewayConfig
    from appliance.profile import load_profile

    path = applied_profile_path(args.profile)
    if path is None:
        raise BadInputError(
            "which box's gateway? no profile has been applied here",
            hint="add --profile profiles/my-box.yaml, or export LLM_APPLIANCE_PROFILE=…",
        )
    return GatewayConfig.from_profile(load_profile(path), state_dir=args.state_dir)


def _cmd_gateway(args: argparse.Namespace) -> ExitCode:
    from appliance.gateway.config import GatewayConfig, Listen
    from appliance.gateway.server import run_gateway
    from appliance.profile import load_profile

    profile = load_profile(args.profile_file)
    config = GatewayConfig.from_profile(
        profile,
        state_dir=args.state_dir,
        chat_upstream=args.chat_upstream,
        embeddings_upstream=args.embeddings_upstream,
        fallback_upstream=args.fallback_upstream,
    )
    listen = Listen.from_profile(profile)
    monitor, companion = _gateway_monitor(profile, args.chat_upstream is None)
    run_gateway(
        config,
        host=args.host or listen.host,
        port=args.port or listen.port,
        ssl_certfile=listen.tls_cert_file,
        ssl_keyfile=listen.tls_key_file,
        log_level=args.log_level,
        load_signal=monitor,
        background=companion,
    )
    return ExitCode.OK


def _gateway_monitor(profile: Any, local_engines: bool) -> tuple[Any, Any]:
    """The monitor the gateway hosts (queue depth for auto fallback, usage for `cost`).

    Returns (load signal, background tasks); (None, ()) when the gateway fronts engines the
    appliance did not start, where it probes the upstream itself.
    """
    if not local_engines:
        return None, ()
    from functools import partial

    from appliance.errors import EnvironmentNotReadyError
    from appliance.gateway.recording import monitor_and_record
    from appliance.monitor.monitor import EngineLoadSignal, Monitor, MonitorConfig
    from appliance.monitor.status import profile_samplers
    from appliance.usage_store import GatewayCounters, UsageRecorder, UsageStore

    monitor = Monitor(profile_samplers(profile), config=MonitorConfig.from_profile(profile))
    try:
        # The gateway's counters live in this very process, so they start from zero: requests
        # served before the monitor's first tick still count.
        recorder: UsageRecorder | None = UsageRecorder(
            UsageStore.for_profile(profile), gateway_baseline=GatewayCounters(0.0, 0.0)
        )
    except EnvironmentNotReadyError as error:
        print(f"warning: {error.render()}\n  (usage is not recorded)", file=sys.stderr)
        recorder = None
    companion = partial(monitor_and_record, monitor=monitor, recorder=recorder)
    return EngineLoadSignal.of(monitor), (companion,)


def _cmd_keys(args: argparse.Namespace) -> ExitCode:
    from appliance.gateway.keys import create_key, list_keys, revoke_key

    keys_file = _gateway_config(args).keys_file
    if args.action == "create":
        created = create_key(
            keys_file, args.name, admin=args.admin, rate_limit_per_minute=args.rate_limit
        )
        if args.json:
            print(json.dumps(created.to_json(), indent=2))
        else:
            print(created.key)
            print(
                f"key {args.name!r} created ({created.info.scope.value}); it is shown only "
                "this once, and only its hash is stored",
                file=sys.stderr,
            )
    elif args.action == "list":
        keys = list_keys(keys_file)
        if args.json:
            print(json.dumps([key.to_json() for key in keys], indent=2))
        if keys and not args.json:
            print(f"{'NAME':24} {'ID':12} {'SCOPE':6} {'LIMIT':>8}  CREATED")
        for key in [] if args.json else keys:
            limit = f"{key.rate_limit_per_minute}/min" if key.rate_limit_per_minute else "-"
            print(f"{key.name:24} {key.key_id:12} {key.scope.value:6} {limit:>8}  {key.created_at}")
    else:
        revoked = revoke_key(keys_file, args.name)
        print(f"revoked {revoked.name} ({revoked.key_id})", file=sys.stderr)
    return ExitCode.OK


def _cmd_fallback(args: argparse.Namespace) -> ExitCode:
    from appliance.gateway.state import read_fallback, set_fallback

    config = _gateway_config(args)
    if args.mode is None:
        state = read_fallback(config.state_file, config.default_fallback_mode)
    else:
        state = set_fallback(
            config.state_file, args.mode, remote_configured=config.remote is not None
        )
    if args.json:
        print(json.dumps(state.to_json(), indent=2))
    else:
        since = f" (since {state.changed_at}, by {state.changed_by})" if state.changed_at else ""
        print(f"fallback {state.mode.value}{since}")
    return ExitCode.OK


# ---------------------------------------------------------------------------------- parser


def _add_detect(commands: _Commands) -> None:
    detect = commands.add_parser(
        "detect",
        help="report the GPUs, host, Docker engine and container toolkit",
        description="Report the GPUs (NVML), host (CPU, RAM, disk) and Docker engine, with "
        "every problem and its fix.",
    )
    detect.add_argument(
        "--simulate",
        metavar="NAME|FILE",
        help="describe a simulated box instead, e.g. rtx4090, 2x4090, l40s, a100-80g, h100, or "
        "a file `appliance detect --json` wrote on the GPU box",
    )
    detect.add_argument("--json", action="store_true", help="print the report as JSON")
    detect.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when the box cannot serve (no GPU, no Docker, no NVIDIA toolkit)",
    )
    detect.add_argument(
        "--models-dir",
        type=opt.directory,
        default=DEFAULT_MODELS_DIR,
        help=f"where weights are stored, for the free-disk check (default {DEFAULT_MODELS_DIR})",
    )
    detect.set_defaults(handler=_cmd_detect)


def _add_validate(commands: _Commands) -> None:
    validate = commands.add_parser(
        "validate",
        help="check profile files",
        description="Check profile files; every problem is reported with file:line and a fix.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_cmd_validate)


def _add_estimate(commands: _Commands) -> None:
    estimate = commands.add_parser(
        "estimate",
        help="how vLLM would budget GPU memory for a model, and whether it fits",
        description="Reproduce vLLM's start-up memory budget: weights, activations, non-torch "
        "memory, CUDA graphs, KV cache, and the concurrency it gives. Exit 4 when vLLM would "
        "refuse to start, with the nearest settings that fit.",
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
        choices=["bf16", "fp16", "awq", "gptq", "fp8", "mxfp4", "nvfp4", "int8"],
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
    estimate.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto")
    estimate.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    estimate.add_argument(
        "--device",
        choices=["gpu", "cpu"],
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
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    estimate.set_defaults(handler=_cmd_estimate)


def _add_recommend(commands: _Commands) -> None:
    rec = commands.add_parser(
        "recommend",
        help="rank models, quantizations and vLLM flags that fit this box and workload",
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
        choices=["gpu", "cpu"],
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
            "you own, to try a simulated box without root",
        )
    rec.set_defaults(handler=_cmd_recommend)


def _add_status(commands: _Commands) -> None:
    status = commands.add_parser(
        "status",
        help="health, GPU use, throughput, latency and alerts of the running services",
        description="Sample the profile's services (vLLM, TEI, gateway) and the GPUs: health, "
        "tokens/s, TTFT and inter-token latency p50/p95, KV-cache use, queue, alerts.",
    )
    status.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    status.add_argument("--simulate", metavar="NAME|FILE", help="show a simulated box's services")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 when any alert is active (for cron, CI)"
    )
    status.set_defaults(handler=_cmd_status)


def _add_scrape(commands: _Commands) -> None:
    scrape = commands.add_parser(
        "scrape",
        help="watch any vLLM or TEI server by URL",
        description="Sample vLLM or TEI servers the appliance did not start, by base URL.",
    )
    scrape.add_argument("urls", nargs="+", metavar="URL")
    scrape.add_argument(
        "--interval", type=opt.interval_seconds, default=1.0, help="seconds between samples"
    )
    scrape.add_argument("--count", type=opt.positive_int, default=None, help="stop after N samples")
    scrape.add_argument("--json", action="store_true", help="one JSON snapshot per line")
    scrape.set_defaults(handler=_cmd_scrape)


def _add_cost(commands: _Commands) -> None:
    cost = commands.add_parser(
        "cost",
        help="is this box paying for itself? cost per 1M tokens and break-even",
        description="Cost per 1M tokens on this box (measured, and at full use) against the "
        "API it replaces, the break-even tokens/day and fallback spend, from recorded usage.",
    )
    cost.add_argument("profile", type=Path, metavar="PROFILE")
    cost.add_argument("--window", choices=["hour", "day", "7d"], default="day")
    cost.add_argument(
        "--inputs", type=opt.input_file, metavar="FILE", help="a YAML file of cost inputs"
    )
    cost.add_argument(
        "--gpu-cost-per-hour",
        type=opt.finite_non_negative_float,
        metavar="X",
        help="rented or cloud",
    )
    cost.add_argument(
        "--purchase-price", type=opt.finite_non_negative_float, metavar="X", help="an owned box"
    )
    cost.add_argument("--amortisation-months", type=opt.positive_int, metavar="N")
    cost.add_argument("--electricity-per-kwh", type=opt.finite_non_negative_float, metavar="X")
    cost.add_argument(
        "--overhead-pct", type=opt.percent, metavar="X", help="operations (default 30)"
    )
    cost.add_argument("--api", metavar="NAME", help="the API replaced, e.g. openai/gpt-4o")
    cost.add_argument(
        "--prices", type=opt.input_file, metavar="FILE", help="your own list-price table"
    )
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    cost.set_defaults(handler=_cmd_cost)


def _add_export(commands: _Commands) -> None:
    export = commands.add_parser(
        "export",
        help="Prometheus scrape config, Grafana dashboard, or Kubernetes manifests",
        description="prometheus: a scrape config for vLLM, TEI, the gateway and DCGM; grafana: "
        "a dashboard; k8s: the profile as Kubernetes manifests (or production-stack values).",
    )
    export.add_argument("target", choices=["prometheus", "grafana", "k8s"])
    export.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    export.add_argument("-o", "--output", metavar="PATH", help="file (dir for k8s)")
    export.add_argument("--format", choices=["manifests", "production-stack"], default="manifests")
    export.add_argument(
        "--simulate", metavar="NAME|FILE", help="the nodes' GPUs and driver, or a detect file"
    )
    export.set_defaults(handler=_cmd_export)


def _add_weights(commands: _Commands) -> None:
    weights = commands.add_parser(
        "weights",
        help="download, import, list and remove model weights",
        description="Model weights on this box: pulled from the Hugging Face Hub with a "
        "preflight, byte progress and resume, or imported from a directory or tarball.",
    )
    actions = weights.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--models-dir",
            type=opt.directory,
            default=None,
            dest="models_dir_given",
            metavar="DIR",
            help=f"where weights live (default: the profile's, else {DEFAULT_MODELS_DIR})",
        )

    pull = actions.add_parser("pull", help="download a profile's weights, or one repo")
    pull.add_argument("target", metavar="PROFILE|REPO")
    pull.add_argument("--revision", metavar="R", help="branch, tag or commit (default main)")
    pull.add_argument(
        "--token-file", type=Path, metavar="FILE", help="a 0600 file holding a Hub token"
    )
    common(pull)
    listing = actions.add_parser("list", help="weights on this box, and which profile uses them")
    listing.add_argument("--json", action="store_true")
    listing.add_argument(
        "--profile", dest="profiles", type=Path, action="append", default=[], metavar="FILE"
    )
    common(listing)
    remove = actions.add_parser("rm", help="delete a repo's weights (refused while in use)")
    remove.add_argument("repo", metavar="REPO")
    remove.add_argument(
        "--profile", dest="profiles", type=Path, action="append", default=[], metavar="FILE"
    )
    common(remove)
    imported = actions.add_parser("import", help="import weights for an air-gapped box")
    imported.add_argument("path", type=Path, metavar="PATH", help="a directory or a tarball")
    imported.add_argument("--as", dest="as_repo", required=True, metavar="REPO[@REVISION]")
    common(imported)
    weights.set_defaults(handler=_cmd_weights)


def _add_runtime(commands: _Commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="what apply would change: create / replace / remove / keep",
        description="Compare the profile with the running containers (found by label) and say "
        "what apply would do, with the fields that changed. Changes nothing.",
    )
    plan.add_argument("profile", type=Path, metavar="PROFILE")
    plan.add_argument(
        "--simulate", metavar="NAME|FILE", help="plan for a simulated box or a detect file"
    )
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=_cmd_plan)

    apply = commands.add_parser(
        "apply",
        help="make the box run the profile (idempotent; rolls back on failure)",
        description="Download the weights, pull images, create the engines, wait until healthy. "
        "A second run with the "
        "same file changes nothing; on failure what ran before is restored (exit 1).",
    )
    apply.add_argument("profile", type=Path, metavar="PROFILE")
    apply.add_argument("-y", "--yes", action="store_true", help="do not ask on a terminal")
    apply.add_argument("--json", action="store_true", help="print the result as JSON")
    apply.set_defaults(handler=_cmd_apply)

    down = commands.add_parser(
        "down", help="stop and remove the appliance's containers (never anything else)"
    )
    down.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    down.add_argument(
        "--purge-weights", action="store_true", help="also delete the profile's weights"
    )
    down.set_defaults(handler=_cmd_down)

    logs = commands.add_parser("logs", help="a service's container logs")
    logs.add_argument("service", choices=["vllm", "tei", "gateway"])
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until Ctrl-C")
    logs.add_argument(
        "--tail", type=opt.non_negative_int, default=100, metavar="N", help="last N lines"
    )
    logs.set_defaults(handler=_cmd_logs)

    compose = commands.add_parser("compose", help="export the profile as a docker compose file")
    compose_actions = compose.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    compose_actions.required = True
    export = compose_actions.add_parser("export", help="write the compose file")
    export.add_argument("profile", type=Path, metavar="PROFILE")
    export.add_argument("-o", "--output", type=opt.output_file, metavar="FILE")
    export.add_argument(
        "--simulate", metavar="NAME|FILE", help="the box the file is for, or its detect file"
    )
    compose.set_defaults(handler=_cmd_compose)


def _add_gateway(commands: _Commands) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="run the team's one OpenAI-compatible endpoint (keys, streaming, fallback)",
        description="Serve /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models "
        "in front of the local engines, with API keys and fallback off | auto | always.",
    )
    gateway.add_argument("--profile", dest="profile_file", type=Path, required=True, metavar="FILE")
    gateway.add_argument("--host", help="listen address (default: the profile's)")
    gateway.add_argument("--port", type=opt.port, help="listen port (default: the profile's)")
    gateway.add_argument("--state-dir", type=opt.directory, help="keys and fallback mode live here")
    gateway.add_argument(
        "--chat-upstream", type=opt.http_url, metavar="URL", help="a vLLM base URL ending in /v1"
    )
    gateway.add_argument(
        "--embeddings-upstream", type=opt.http_url, metavar="URL", help="a TEI base URL (/v1)"
    )
    gateway.add_argument(
        "--fallback-upstream",
        type=opt.http_url,
        metavar="URL",
        help="the remote API's base URL, overriding the profile",
    )
    gateway.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    gateway.set_defaults(handler=_cmd_gateway)

    def which_box(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--profile", type=Path, help="the applied profile (or $LLM_APPLIANCE_PROFILE)"
        )
        parser.add_argument(
            "--state-dir", type=opt.directory, help="override the profile's state_dir"
        )

    keys = commands.add_parser("keys", help="create, list and revoke gateway API keys")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    create = actions.add_parser("create", help="make a key; it is shown once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--admin", action="store_true", help="for /admin endpoints only")
    create.add_argument(
        "--rate-limit", type=opt.positive_int, metavar="N", help="requests per minute"
    )
    create.add_argument("--json", action="store_true")
    which_box(create)
    listing = actions.add_parser("list", help="the keys (names and ids, never the keys)")
    listing.add_argument("--json", action="store_true")
    which_box(listing)
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("name", metavar="NAME")
    which_box(revoke)
    keys.set_defaults(handler=_cmd_keys)

    from appliance.cli_bundle import add_bundle_parser  # the lead moves this into cli/

    add_bundle_parser(commands)

    fallback = commands.add_parser(
        "fallback",
        help="show or switch the API fallback: off | auto | always (survives restarts)",
    )
    fallback.add_argument("mode", nargs="?", choices=["off", "auto", "always"])
    fallback.add_argument("--json", action="store_true")
    which_box(fallback)
    fallback.set_defaults(handler=_cmd_fallback)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="appliance",
        description="Turn one GPU box into a private, OpenAI-compatible LLM service.",
        epilog="Exit codes: 0 ok, 1 failed (rolled back), 2 bad input, "
        "3 environment not ready, 4 nothing fits / refused.",
    )
    parser.add_argument("--version", action="version", version=f"llm-appliance {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks of unexpected errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _add_detect(commands)
    _add_validate(commands)
    _add_estimate(commands)
    _add_recommend(commands)
    _add_status(commands)
    _add_scrape(commands)
    _add_cost(commands)
    _add_export(commands)
    _add_weights(commands)
    _add_runtime(commands)
    _add_gateway(commands)
    return parser


# ---------------------------------------------------------------------------------- main


def _log_unexpected(error: BaseException) -> Path | None:
    """Write the full traceback to the state directory; return where, or None if it can't."""
    try:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "appliance.log"
        with path.open("a", encoding="utf-8") as stream:
            stream.write(f"\n--- {dt.datetime.now(dt.UTC).isoformat()} {sys.argv!r}\n")
            stream.write("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def run(argv: Sequence[str] | None = None) -> ExitCode:
    """Run one command and return its exit code; never raises for a user's mistake."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except ApplianceError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as error:
        # An apply says which signal and what it restored (`ApplyInterrupted`).
        print(f"interrupted: {error}" if str(error) else "interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `appliance … | head` closed the pipe: not an error. Silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception as error:  # noqa: BLE001 - last line of defence; tracebacks are for --debug
        if debug:
            traceback.print_exception(error)
        else:
            where = _log_unexpected(error)
            trace = f"; full trace in {where}" if where else ""
            print(
                f"error: unexpected {type(error).__name__}: {error}{trace}\n"
                "  → run again with --debug to see it here, and report it",
                file=sys.stderr,
            )
        return ExitCode.FAILED


def main() -> None:
    sys.exit(run())
