"""Deploy: the plan for the profile chosen in Recommend, then (confirmed) weights, images, start
and health wait with progress — or, where it cannot apply, exactly why not.

The plan is `appliance plan`'s (`Services.plan`): create / replace / remove / keep, each with the
fields that change. Applying is `Services.deploy` (the weights' `pull_profile`, then
`apply_profile`), in a thread worker whose cancel event stops the download; apply re-plans under
its lock and changes nothing unless that plan is the one the operator confirmed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, ProgressBar, RichLog, Static
from textual.worker import Worker, get_current_worker

from appliance.errors import ApplianceError
from appliance.tui.messages import (
    DeployFailed,
    DeployFinished,
    DeployProgressed,
    PlanComputed,
    PlanFailed,
    ProfileChosen,
)
from appliance.tui.notices import notify_worker_failure
from appliance.tui.screens.base import ApplianceScreen, this_screen
from appliance.units import EN_DASH as DASH
from appliance.units import human_bytes

if TYPE_CHECKING:
    from pathlib import Path

    from appliance.hardware.box import Box
    from appliance.profile import Profile
    from appliance.runtime.plan import Plan

_STEP_MARK = {"healthy": "✔", "done": "✔", "rollback": "↺", "remove": "✘", "set-aside": "⏸"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ConfirmApply(ModalScreen[bool]):
    """Apply this plan? Nothing changes until the operator says yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "dismiss(True)", "Apply"),
        Binding("n,escape", "dismiss(False)", "Cancel"),
    ]

    def __init__(self, profile: Profile, plan: Plan) -> None:
        super().__init__()
        self.profile = profile
        self.plan = plan

    def compose(self) -> ComposeResult:
        counts: dict[str, int] = {}
        for action in self.plan.changes:
            counts[action.kind] = counts.get(action.kind, 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        with Vertical(classes="dialog"):
            yield Static(
                Text.assemble(
                    ("Apply ", "bold"),
                    (self.profile.metadata.name, "bold"),
                    f"? {summary}. The weights are downloaded first (resumable), the gateway's "
                    "systemd unit is (re)started last; if an engine does not turn healthy, what "
                    "ran before is put back. (y/n)",
                )
            )
            yield Footer(compact=True, show_command_palette=False)


_KIND_STYLE = {
    "create": "bold green",
    "replace": "bold yellow",
    "remove": "bold red",
    "keep": "dim",
}


def plan_table(plan: Plan) -> RenderableType:
    if plan.is_noop:
        return Text("No changes: every container already runs as the profile asks.", style="green")
    table = Table(expand=True, box=None, padding=(0, 1), header_style="bold")
    table.add_column("action", no_wrap=True)
    table.add_column("service", no_wrap=True)
    table.add_column("container / what changes", ratio=1)
    for action in plan.actions:
        detail = Text(action.name)
        if action.spec is not None:
            detail.append(f"  {action.spec.image}", style="dim")
        if action.reason:
            detail.append(f"\n{action.reason}", style="italic")
        for change in action.changes:
            detail.append(f"\n{change.render()}")
        if action.spec is not None and action.kind in ("create", "replace"):
            gpus = action.spec.gpu_device_ids
            shown = "all" if gpus == "all" else ", ".join(gpus or ()) or "none"
            detail.append(f"\n{' '.join(action.spec.command)}", style="dim")
            detail.append(f"\nGPUs: {shown}", style="dim")
        table.add_row(Text(action.kind, style=_KIND_STYLE[action.kind]), action.role, detail)
    return table


def profile_summary(profile: Profile, source: Path | None = None) -> Text:
    spec = profile.spec
    text = Text.assemble(("Profile ", "bold"), (profile.metadata.name, "bold"))
    if source is not None:
        text.append(f" ({source})", style="dim")
    text.append(f"\n{spec.model.repo} ({spec.model.quantization or 'auto'})")
    engine = spec.engine
    text.append(
        f" · max_model_len {engine.max_model_len} · max_num_seqs {engine.max_num_seqs}"
        f" · gpu_memory_utilization {engine.gpu_memory_utilization}",
        style="dim",
    )
    if spec.embeddings_enabled and spec.embeddings is not None:
        text.append(f"\nembeddings {spec.embeddings.repo}", style="dim")
    return text


class DeployScreen(ApplianceScreen):
    """What `appliance apply` would change for the chosen profile."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("g", "replan", "Re-plan"),
        Binding("a", "apply", "Apply"),
        this_screen("d", "deploy", "Deploy"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="deploy-body"):
            yield Static(id="deploy-profile")
            yield Static(id="deploy-disabled", classes="callout")
            with Vertical(classes="panel", id="deploy-plan") as panel:
                panel.border_title = "Plan"
                yield Static(id="plan")
            with Vertical(classes="panel", id="deploy-steps") as panel:
                panel.border_title = "Apply would then"
                yield Static(id="steps")
            with Vertical(classes="panel", id="deploy-progress") as panel:
                panel.border_title = "Deploying"
                yield Static("Weights", classes="progress-title")
                yield ProgressBar(id="weights-bar", show_eta=False)
                yield Static(id="weights-text")
                yield Static("Images", classes="progress-title")
                yield ProgressBar(id="image-bar", show_eta=False)
                yield Static(id="image-text")
                yield RichLog(id="deploy-log", markup=False, wrap=True, auto_scroll=True)
                yield Static(id="deploy-result")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        reason = self.appliance.services.deploy_disabled
        disabled = self.query_one("#deploy-disabled", Static)
        disabled.display = reason is not None
        if reason is not None:
            disabled.update(Text.assemble(("Deploy is disabled here: ", "bold"), reason))
        self.query_one("#deploy-progress").display = False
        self.plan: Plan | None = None
        self.deploying = False
        # Set when a deploy ends: the re-plan that follows changes the layout, so the result line
        # is scrolled into view once that plan is shown, not before (whichever comes first).
        self.result_to_reveal = False
        self.query_one("#steps", Static).update(
            Text(
                "1. check free disk, GPU access from Docker and free ports (nothing changes if any "
                "fails)\n2. download the weights (bytes, rate, ETA) and pull the pinned images\n"
                "3. create and start the containers, vLLM first, then TEI\n4. wait until each "
                "answers /health, within its deadline\n5. install and (re)start the gateway's "
                "systemd unit, the team's endpoint\n6. on failure: the diagnosis, the last log "
                "lines, and the previous containers put back"
            )
        )
        self.watch(self.app, "chosen", self._chosen_changed)
        self.watch(self.app, "box", self._box_changed)

    def _box_changed(self, box: Box | None) -> None:
        self._chosen_changed(self.appliance.chosen)

    def _chosen_changed(self, chosen: ProfileChosen | None) -> None:
        box = self.appliance.box
        if chosen is None:
            self.query_one("#deploy-profile", Static).update(
                Text.assemble(
                    "No profile chosen yet. In Recommend (",
                    ("r", "bold reverse"),
                    ") pick a candidate and press ",
                    ("p", "bold reverse"),
                    " to plan it here.",
                )
            )
            self.query_one("#deploy-plan").display = False
            return
        self.query_one("#deploy-plan").display = True
        summary = profile_summary(chosen.profile, chosen.source)
        self.query_one("#deploy-profile", Static).update(summary)
        if box is None:
            self.query_one("#plan", Static).update("Waiting for the box…")
            return
        self.query_one("#plan", Static).update(Text("Planning…", style="dim"))
        self.compute_plan(chosen.profile, box)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan")
    def compute_plan(self, profile: Profile, box: Box) -> None:
        plan = self.appliance.services.plan
        if plan is None:
            self.post_message(PlanFailed("planning is not available here"))
            return
        try:
            result = plan(profile, box)
        except ApplianceError as error:
            self.post_message(PlanFailed(error.render()))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(PlanComputed(profile, result))

    @on(PlanComputed)
    def _planned(self, message: PlanComputed) -> None:
        self.plan = message.plan
        self.query_one("#plan", Static).update(plan_table(message.plan))
        self.refresh_bindings()
        self._reveal_result()

    @on(PlanFailed)
    def _plan_failed(self, message: PlanFailed) -> None:
        self.query_one("#plan", Static).update(
            Group(Text("The plan could not be made:", style="bold red"), Text(message.reason))
        )
        self._reveal_result()

    def _reveal_result(self) -> None:
        if self.result_to_reveal:
            self.result_to_reveal = False
            result_line = self.query_one("#deploy-result", Static)
            self.call_after_refresh(result_line.scroll_visible, animate=False)

    def action_replan(self) -> None:
        self._chosen_changed(self.appliance.chosen)

    def disabled_reason(self) -> str | None:
        """Why `a` cannot apply now, in words; None when it can."""
        services = self.appliance.services
        box = self.appliance.box
        reasons = (
            (services.deploy_disabled is not None, services.deploy_disabled),
            (services.deploy is None, "deploying is not available here"),
            (self.deploying, "a deploy is running"),
            (
                box is not None and not box.can_serve,
                "the box is not ready to serve: see its blockers on the Box screen (b)",
            ),
            (
                self.plan is None,
                "there is no plan yet: choose a profile in Recommend (r) and press p",
            ),
            (
                self.plan is not None and self.plan.is_noop,
                "nothing to do: every container already runs as the profile asks",
            ),
        )
        return next((reason for applies, reason in reasons if applies), None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "apply" and self.disabled_reason() is not None:
            return None  # shown greyed out in the footer
        return True

    def key_a(self, event: events.Key) -> None:
        """A greyed-out key does nothing in Textual; this one says why it is greyed out.

        Runs before the app's bindings (the key reaches the screen first); when Apply is
        available it leaves the key alone, so the binding acts.
        """
        reason = self.disabled_reason()
        if reason is not None:
            event.stop()
            event.prevent_default()
            self.notify(f"Apply is not available: {reason}", severity="warning")

    def action_apply(self) -> None:
        reason = self.disabled_reason()
        chosen = self.appliance.chosen
        box = self.appliance.box
        if reason is not None or chosen is None or box is None or self.plan is None:
            self.notify(reason or "nothing to apply", severity="warning")
            return
        shown = self.plan

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.start_deploy(chosen, box, shown)

        self.app.push_screen(ConfirmApply(chosen.profile, shown), confirmed)

    def start_deploy(self, chosen: ProfileChosen, box: Box, shown: Plan) -> None:
        self.deploying = True
        self.refresh_bindings()
        self.query_one("#deploy-steps").display = False
        self.query_one("#deploy-progress").display = True
        self.query_one("#deploy-result", Static).update("")
        self.query_one("#deploy-log", RichLog).clear()
        progress = self.query_one("#deploy-progress")
        self.call_after_refresh(progress.scroll_visible, top=True, animate=False)
        self.deploy(chosen, box, shown)

    @work(thread=True, exclusive=True, exit_on_error=False, group="deploy")
    def deploy(self, chosen: ProfileChosen, box: Box, shown: Plan) -> None:
        deployer = self.appliance.services.deploy
        assert deployer is not None
        cancel = get_current_worker().cancelled_event

        def report(item: object) -> None:
            self.post_message(DeployProgressed(item))

        def same_plan(plan: Plan) -> bool:
            return plan.to_json() == shown.to_json()

        try:
            result = deployer(chosen.profile, box, report, cancel, same_plan, source=chosen.source)
        except ApplianceError as error:
            self.post_message(DeployFailed(error.render()))
            return
        self.post_message(DeployFinished(result))

    @on(DeployProgressed)
    def _progressed(self, message: DeployProgressed) -> None:
        from appliance.runtime.apply import ApplyEvent
        from appliance.weights import DownloadProgress

        item = message.report
        if isinstance(item, DownloadProgress):
            bar = self.query_one("#weights-bar", ProgressBar)
            bar.update(total=max(1, item.bytes_total), progress=item.bytes_done)
            rate = (
                DASH
                if item.rate_bytes_per_second is None
                else f"{human_bytes(item.rate_bytes_per_second)}/s"
            )
            self.query_one("#weights-text", Static).update(
                f"{item.repo}: {human_bytes(item.bytes_done)} of {human_bytes(item.bytes_total)} · "
                f"{item.files_done}/{item.files_total} files · {rate} · ETA "
                f"{_duration(item.eta_seconds)} · {item.phase}"
            )
        elif isinstance(item, ApplyEvent):
            if item.pull is not None:
                pull = item.pull
                bar = self.query_one("#image-bar", ProgressBar)
                if pull.total_bytes:
                    bar.update(total=pull.total_bytes, progress=pull.downloaded_bytes)
                self.query_one("#image-text", Static).update(
                    f"{pull.image}: {pull.status} · {human_bytes(pull.downloaded_bytes)}"
                    + (f" of {human_bytes(pull.total_bytes)}" if pull.total_bytes else "")
                )
                return
            if item.step == "plan":
                return
            mark = _STEP_MARK.get(item.step, "·")
            self.query_one("#deploy-log", RichLog).write(Text(f"{mark} {item.message}"))

    @on(DeployFinished)
    def _finished(self, message: DeployFinished) -> None:
        self.deploying = False
        self.refresh_bindings()
        result = message.result
        if result.applied:
            chosen = self.appliance.chosen
            if chosen is not None:
                copy = None if result.gateway is None else result.gateway.profile_copy
                self.appliance.watch_deployed(chosen.profile, copy or chosen.source)
            text = Text.assemble(
                ("✔ Deployed: every engine answers /health. ", "bold green"),
                "The Monitor (m) shows it live.",
            )
            gateway = result.gateway_line()
            if gateway is not None:
                text.append(f"\n{gateway}", style="green" if result.gateway else "yellow")
        elif result.plan.is_noop:
            text = Text("Nothing to do: every container already runs as the profile asks.")
        else:
            text = Text(
                "Nothing was changed: the plan changed since you confirmed it. Re-plan (g) and "
                "look again.",
                style="bold yellow",
            )
        self.query_one("#deploy-result", Static).update(text)
        self.result_to_reveal = True
        self.action_replan()

    @on(DeployFailed)
    def _failed(self, message: DeployFailed) -> None:
        self.deploying = False
        self.refresh_bindings()
        text = Text.assemble(("✘ Deploy failed\n", "bold red"), message.reason)
        self.query_one("#deploy-result", Static).update(text)
        self.result_to_reveal = True
        self._reveal_result()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "deploy" and event.state.name in ("ERROR", "CANCELLED"):
            self.deploying = False
        notify_worker_failure(event)
