"""`tune`: run the sweep of `appliance.tuning` on this box (#18 point 3).

Each point is the profile with its engine settings changed, applied through the normal apply
path (`runtime.apply.apply_profile`: only the appliance's own containers, the previous engine
set aside until the new one is healthy), then benchmarked through the gateway with `bench`'s
own operation, its result kept beside every other bench run. At the end the box runs either
the winner (written into the profile with `--yes`) or, again, the original.

Whatever ends a tune early (Ctrl-C, SIGTERM, SIGHUP, a point whose engine does not start or
cannot be benchmarked) puts the original back: the profile file's text as it was, and the
original engine applied again. A second signal during that restore does not stop it.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import ApplianceError, BadInputError, OperationFailedError
from appliance.runtime.interrupts import SignalGuard
from appliance.tuning import (
    Measured,
    Point,
    Sweep,
    default_batched,
    default_seqs,
    early_stopped,
    next_point,
    plan_sweep,
    provenance,
    winner,
    with_tuned,
)

if TYPE_CHECKING:
    from appliance.benchmark import BenchRun
    from appliance.hardware.box import Box
    from appliance.operations.bench import BenchPlan, EngineFacts
    from appliance.profile import Profile
    from appliance.runtime.engine import ContainerEngine
    from appliance.runtime.specs import SpecOptions
    from appliance.vocabulary import KvCacheDtype

_BENCH_TRIES = 3  # the gateway may need a moment to reach a freshly started engine


class TuneInterrupted(KeyboardInterrupt):
    """A signal ended the tune; the original profile and engine were put back."""


class TunePointError(OperationFailedError):
    """A point's engine did not start or could not be benchmarked; the original is back."""


@dataclass(frozen=True)
class TuneEvent:
    """What the tune is doing, for the CLI's progress lines."""

    message: str
    point: Point | None = None
    measured: Measured | None = None


@dataclass(frozen=True)
class TuneResult:
    sweep: Sweep
    measured: tuple[Measured, ...]
    winner: Measured | None
    written: bool  # the winner is in the profile file and running
    stopped_early: tuple[Point, ...]
    concurrency: int


def point_profile(profile: Profile, point: Point) -> Profile:
    """The profile with the point's engine settings."""
    engine = profile.spec.engine.model_copy(
        update={
            "max_num_seqs": point.max_num_seqs,
            "max_num_batched_tokens": point.max_num_batched_tokens,
            "kv_cache_dtype": point.kv_cache_dtype,
        }
    )
    return profile.model_copy(update={"spec": profile.spec.model_copy(update={"engine": engine})})


def original_point(profile: Profile) -> Point:
    engine = profile.spec.engine
    return Point(engine.kv_cache_dtype, engine.max_num_batched_tokens, engine.max_num_seqs or 0)


def build_sweep(
    profile: Profile,
    box: Box,
    *,
    seqs: Sequence[int] | None = None,
    batched: Sequence[int] | None = None,
    kv_dtypes: Sequence[KvCacheDtype] | None = None,
) -> Sweep:
    """The points for this profile on this box, each sized as `apply` would size it."""
    from appliance.fit import gpu_target_for_profile
    from appliance.runtime.apply import check_fits

    engine = profile.spec.engine
    if engine.kind != "vllm" or profile.spec.switching is not None:
        raise BadInputError(
            "appliance tune sweeps vLLM's max_num_seqs and max_num_batched_tokens of a profile "
            "with one chat model",
            hint="this profile runs SGLang or several switched models",
        )
    dtypes: Sequence[KvCacheDtype] = kv_dtypes or (engine.kv_cache_dtype,)
    if kv_dtypes is None and engine.kv_cache_dtype == "auto":
        target = gpu_target_for_profile(profile, box)
        if target is not None and target.compute_capability >= (8, 9):  # FP8, as recommend
            dtypes = ("auto", "fp8")

    def fits(point: Point) -> str | None:
        try:
            check_fits(point_profile(profile, point), box)
        except ApplianceError as error:
            return error.message.removesuffix("; nothing was changed")
        return None

    return plan_sweep(
        original_point(profile),
        seqs=seqs or default_seqs(engine.max_num_seqs),
        batched=batched or default_batched(engine.max_num_batched_tokens, engine.max_model_len),
        kv_dtypes=dtypes,
        max_model_len=engine.max_model_len,
        fits=fits,
    )


class _Signals(SignalGuard):
    """SIGINT, SIGTERM and SIGHUP raise `TuneInterrupted` (`runtime.interrupts`; apply
    installs its own while it runs, and raises its `ApplyInterrupted` after its own rollback).
    While the original is being restored they are only noted."""

    def __init__(self) -> None:
        super().__init__()
        self.restoring = False

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        self.received = self.received or name
        if not self.restoring:
            raise TuneInterrupted(name)


def run_tune(
    path: Path,
    box: Box,
    engine: ContainerEngine | None,
    sweep: Sweep,
    bench_plan: BenchPlan,
    *,
    write: bool,
    points: int,
    budget_s: float | None = None,
    state_dir: Path | None = None,
    options: SpecOptions | None = None,
    deadlines_s: dict[str, float] | None = None,
    on_event: Callable[[TuneEvent], None] | None = None,
    facts: Callable[[Profile], EngineFacts] | None = None,
    bench: Callable[..., BenchRun] | None = None,
    pause_s: float = 1.0,
) -> TuneResult:
    """Measure the sweep's points (at most `points`, and none started after `budget_s`), then
    leave the box on the winner (written into `path`'s text when `write`) or the original.

    Raises `TuneInterrupted` (a signal) or `TunePointError` after putting the original profile
    text and engine back. With `engine` None, this box's Docker engine is opened here (the faces
    never wire it themselves).
    """
    if engine is None:
        from appliance.operations.engine import engine_session

        with engine_session(None) as session:
            return run_tune(
                path, box, session, sweep, bench_plan, write=write, points=points,
                budget_s=budget_s, state_dir=state_dir, options=options,
                deadlines_s=deadlines_s, on_event=on_event, facts=facts, bench=bench,
                pause_s=pause_s,
            )  # fmt: skip
    from appliance.fileio import atomic_write
    from appliance.operations import bench as bench_op
    from appliance.profile import load_profile, parse_profile
    from appliance.runtime.apply import apply_profile

    tell = on_event or (lambda _: None)
    run_bench = bench or bench_op.run_bench
    engine_facts = facts or bench_op.engine_facts
    original_text = path.read_text(encoding="utf-8")
    original = load_profile(path)
    kept_in = state_dir or original.spec.storage.state_dir
    concurrency = int(bench_plan.levels[0])

    def apply(profile: Profile) -> None:
        apply_profile(profile, box, engine, options=options, deadlines_s=deadlines_s)

    def restore() -> None:
        _restore(path, original_text, lambda: apply(original), tell)

    # One request before anything changes: a gateway that is not running or a key it refuses
    # is one clear line (bench's own preflight), not an engine restarted for nothing.
    run_bench(replace(bench_plan, requests=1, levels=(1.0,)), profile_name=original.metadata.name)
    done: list[Measured] = []
    started = time.monotonic()
    with _Signals() as signals:
        try:
            while (point := next_point(sweep, done, limit=points)) is not None:
                if budget_s is not None and time.monotonic() - started > budget_s:
                    tell(TuneEvent("the time budget is spent: no further points"))
                    break
                tell(TuneEvent(f"point {len(done) + 1}: {point.label()}", point=point))
                measured = _measure(
                    point,
                    point_profile(original, point),
                    apply=apply,
                    plan=bench_plan,
                    run_bench=run_bench,
                    engine_facts=engine_facts,
                    kept_in=kept_in,
                    pause_s=pause_s,
                )
                done.append(measured)
                tell(TuneEvent("measured", point=point, measured=measured))
            best = winner(done)
            written = False
            if best is not None and write:
                text = with_tuned(
                    original_text,
                    best.point,
                    provenance(
                        best,
                        when=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
                        slo=bench_plan.slo,
                        was=sweep.original,
                        measured=len(done),
                        of=len(sweep.points),
                        concurrency=concurrency,
                    ),
                )
                tuned = parse_profile(text, str(path))  # the written text must load
                atomic_write(path, text.encode())
                tell(TuneEvent(f"wrote the winner into {path}"))
                apply(tuned)
                written = True
            else:
                restore()
        except BaseException as error:
            signals.restoring = True
            restore()
            if isinstance(error, KeyboardInterrupt):
                name = signals.received or str(error) or "SIGINT"
                raise TuneInterrupted(
                    f"{name}: the tune stopped; the original profile and engine were put back"
                ) from None
            raise
    return TuneResult(sweep, tuple(done), best, written, early_stopped(sweep, done), concurrency)


def _restore(
    path: Path, text: str, apply: Callable[[], None], tell: Callable[[TuneEvent], None]
) -> None:
    """The profile's text as it was, and its engine applied again."""
    from appliance.fileio import atomic_write

    if path.read_text(encoding="utf-8") != text:
        atomic_write(path, text.encode())
    tell(TuneEvent("restoring the original engine settings"))
    for attempt in range(3):  # a signal during this apply: apply rolls back; go again
        try:
            apply()
            return
        except KeyboardInterrupt:
            if attempt == 2:
                raise


def _measure(
    point: Point,
    profile: Profile,
    *,
    apply: Callable[[Profile], None],
    plan: BenchPlan,
    run_bench: Callable[..., BenchRun],
    engine_facts: Callable[[Profile], EngineFacts],
    kept_in: Path,
    pause_s: float,
) -> Measured:
    from appliance.errors import EnvironmentNotReadyError
    from appliance.operations.bench import save_run

    try:
        apply(profile)
    except ApplianceError as error:
        raise TunePointError(
            f"the engine did not run {point.label()}: {error.message}",
            hint="the original profile and engine were put back",
        ) from None
    last = ""
    for attempt in range(_BENCH_TRIES):
        try:
            run = run_bench(plan, profile_name=profile.metadata.name, facts=engine_facts(profile))
            break
        except (OperationFailedError, EnvironmentNotReadyError) as error:
            last = error.message
            if attempt + 1 < _BENCH_TRIES:
                time.sleep(pause_s)
    else:
        raise TunePointError(
            f"{point.label()} could not be benchmarked: {last}",
            hint="the original profile and engine were put back",
        )
    saved = save_run(kept_in, run)
    return Measured(point, run.levels[0] if run.levels else None, bench_file=str(saved))


def single_level(plan: BenchPlan, concurrency: int) -> BenchPlan:
    """A bench plan of one concurrency level: each point is measured at the same load."""
    return replace(plan, mode="concurrency", levels=(float(concurrency),))
