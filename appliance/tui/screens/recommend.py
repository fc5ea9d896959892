"""Recommend: workload knobs that re-estimate live, ranked candidates with their memory split,
the rejected ones with reasons, and the chosen one as a profile to preview, save or plan.

Every number comes from `appliance.recommend.recommend` (what `appliance recommend` prints);
the screen only turns knobs into a `Workload` and draws the `Recommendation`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import (
    Checkbox,
    Footer,
    Header,
    Input,
    Label,
    Select,
    Static,
    TabbedContent,
    TabPane,
)
from textual.worker import Worker, get_current_worker

from appliance.errors import ApplianceError
from appliance.tui.messages import (
    ProfileChosen,
    ProfileSaved,
    RecommendationComputed,
    RecommendationFailed,
)
from appliance.tui.notices import notify_worker_failure
from appliance.tui.screens.base import ApplianceScreen, this_screen
from appliance.tui.widgets.memory_bar import MemoryBar

if TYPE_CHECKING:
    from appliance.hardware.box import Box
    from appliance.recommend import Candidate, Recommendation, Workload

NARROW = 100  # columns below which the knobs give the candidates every column they can
KINDS = ("chat", "rag", "batch")
PREFERENCES = ("quality", "balanced", "speed")
NUMBER_KNOBS = (
    ("users", "Users"),
    ("context", "Context"),
    ("prompt_tokens", "Prompt tok"),
    ("output_tokens", "Output tok"),
)
INITIAL = {
    "kind": "chat",
    "users": 10,
    "context": 8192,
    "prompt_tokens": 1500,
    "output_tokens": 500,
}


def candidate_title(rank: int, candidate: Candidate) -> Text:
    title = Text.assemble(
        (f"{rank}. ", "bold"),
        (candidate.model_key, "bold"),
        f" {candidate.quantization.upper()}",
    )
    if candidate.tensor_parallel_size > 1:
        title.append(f" TP{candidate.tensor_parallel_size}")
    if candidate.engine == "sglang":  # only on evidence; its why cites the benchmark
        title.append(" on SGLang")
    title.append(f" · {candidate.at_once_text()}", style="dim")
    return title


class CardTitle(Widget):
    """A card's title on one line when it fits; otherwise the figures (everything from the first
    " · ") move whole to a second line, so a number is never parted from its unit."""

    DEFAULT_CSS = """
    CardTitle {
        height: auto;
    }
    """

    def __init__(self, title: Text, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.title = title

    def render(self) -> Text:
        title = self.title
        cut = title.plain.find(" · ")
        width = self.size.width
        if cut < 0 or width == 0 or title.cell_len <= width:
            return title
        figures = title[cut + len(" · ") :]
        lines = Text.assemble(title[:cut], "\n", Text("   ", style="dim"), figures)
        lines.no_wrap = True
        lines.overflow = "ellipsis"
        return lines


class CandidateCard(Widget, can_focus=True):
    """One ranked candidate: title, stacked memory bar with legend, and its why on one line."""

    DEFAULT_CSS = """
    CandidateCard {
        height: auto;
        padding: 0 1;
        margin-bottom: 1;
        border-left: outer $surface-lighten-2;
    }
    CandidateCard:focus {
        border-left: outer $accent;
        background: $boost;
    }
    CandidateCard > .why {
        height: 1;
        text-overflow: ellipsis;
        text-wrap: nowrap;
        color: $text-muted;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down", "step(1)", "Next", show=False),
        Binding("up", "step(-1)", "Previous", show=False),
    ]

    def __init__(self, rank: int, candidate: Candidate) -> None:
        super().__init__()
        self.rank = rank
        self.candidate = candidate

    def compose(self) -> ComposeResult:
        yield CardTitle(candidate_title(self.rank, self.candidate), classes="title")
        yield MemoryBar(self.candidate.sglang_estimate or self.candidate.estimate)
        yield Static(f"why: {self.candidate.why}", classes="why")

    def action_step(self, delta: int) -> None:
        cards = list(self.screen.query(CandidateCard))
        index = cards.index(self)
        target = cards[max(0, min(len(cards) - 1, index + delta))]
        target.focus()


def rejected_text(recommendation: Recommendation) -> Text:
    """Each rejected choice on its own line(s): what, then why not, wrapped to the pane."""
    text = Text()
    gated: list[str] = []
    for item in recommendation.rejected:
        quant = item.quantization.upper()
        if item.tensor_parallel_size is not None:
            quant += f" TP{item.tensor_parallel_size}"
        if item.reason.startswith("gated"):
            gated.append(f"{item.model_key} {quant}")
            continue
        if text:
            text.append("\n")
        text.append(f"{item.model_key} {quant}", style="bold")
        text.append(f": {item.reason}")
    if gated:
        if text:
            text.append("\n")
        text.append("Gated", style="bold")
        text.append(
            " (they need a Hugging Face token with the model's licence accepted; with HF_TOKEN "
            f"set, tick Gated): {', '.join(gated)}"
        )
    return text or Text("Nothing was rejected.")


class RecommendScreen(ApplianceScreen):
    """Pick a workload, see what fits, keep the one you want."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "focus_candidates", "Candidates", show=False),
        # Secondary keys stay out of the 80-column footer (Help lists them; tabs are visible).
        Binding("w", "focus_knobs", "Workload", show=False, tooltip="Edit the workload knobs"),
        Binding("y", "tab('profile')", "YAML", tooltip="The chosen candidate as a profile"),
        Binding("x", "tab('rejected')", "Rejected", show=False, tooltip="What did not fit, why"),
        Binding("s", "save", "Save", tooltip="Save the chosen candidate as a profile file"),
        Binding("p", "plan", "Plan", tooltip="Plan the chosen candidate in Deploy"),
        this_screen("r", "recommend", "Recommend"),
    ]

    selected: reactive[int] = reactive(0)

    def __init__(self) -> None:
        super().__init__()
        self.recommendation: Recommendation | None = None
        self.workload: Workload | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="recommend-body"):
            with VerticalScroll(id="knobs", classes="panel") as knobs:
                knobs.border_title = "Workload"
                with Horizontal(classes="knob"):
                    yield Label("Kind")
                    yield Select(
                        [(kind, kind) for kind in KINDS],
                        value="chat",
                        allow_blank=False,
                        compact=True,
                        id="kind",
                    )
                for name, label in NUMBER_KNOBS:
                    with Horizontal(classes="knob"):
                        yield Label(label)
                        yield Input(str(INITIAL[name]), type="integer", compact=True, id=name)
                with Horizontal(classes="knob"):
                    yield Label("Favour")
                    yield Select(
                        [(pref, pref) for pref in PREFERENCES],
                        value="balanced",
                        allow_blank=False,
                        compact=True,
                        id="preference",
                    )
                yield Checkbox("Embeddings (TEI)", False, compact=True, id="embeddings")
                yield Checkbox("Gated (HF token)", False, compact=True, id="allow-gated")
                yield Static(id="knob-error")
            with TabbedContent(id="recommend-tabs"):
                with TabPane("Candidates", id="candidates-tab"):
                    yield Static("Waiting for the box…", id="recommend-summary")
                    yield VerticalScroll(id="candidates")
                with TabPane("Rejected", id="rejected"), VerticalScroll():
                    yield Static(id="rejected-table")
                with TabPane("Profile YAML", id="profile"), VerticalScroll():
                    yield Static(id="profile-yaml")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.watch(self.app, "box", self._box_changed)

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < NARROW, "-narrow")

    def _box_changed(self, box: Box | None) -> None:
        if box is not None:
            self.reestimate()

    # -- knobs

    def read_workload(self) -> Workload:
        """The knobs as a `Workload`; `BadInputError` names the knob that is wrong."""
        from appliance.errors import BadInputError
        from appliance.recommend import Workload

        numbers: dict[str, int] = {}
        for name, label in NUMBER_KNOBS:
            text = self.query_one(f"#{name}", Input).value.strip()
            if not text.isdigit():
                raise BadInputError(f"{label}: a whole number, please")
            numbers[name] = int(text)
        kind = cast("str", self.query_one("#kind", Select).value)
        preference = cast("str", self.query_one("#preference", Select).value)
        return Workload(
            kind=kind,  # type: ignore[arg-type]
            users=numbers["users"],
            context=numbers["context"],
            prompt_tokens=numbers["prompt_tokens"],
            output_tokens=numbers["output_tokens"],
            preference=preference,  # type: ignore[arg-type]
            embeddings=self.query_one("#embeddings", Checkbox).value,
            allow_gated=self.query_one("#allow-gated", Checkbox).value,
        )

    @on(Select.Changed, "#kind")
    def _kind_changed(self, event: Select.Changed) -> None:
        """A new kind brings that kind's typical numbers (the CLI's defaults for it)."""
        from appliance.recommend import Workload

        kind = cast("str", event.value)
        defaults = Workload.for_kind(kind)  # type: ignore[arg-type]
        with self.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
            for name, _ in NUMBER_KNOBS:
                self.query_one(f"#{name}", Input).value = str(getattr(defaults, name))
            self.query_one("#preference", Select).value = defaults.preference
            self.query_one("#embeddings", Checkbox).value = defaults.embeddings
        self.reestimate()

    @on(Input.Changed)
    @on(Select.Changed, "#preference")
    @on(Checkbox.Changed)
    def _knob_changed(self) -> None:
        self.reestimate()

    def reestimate(self) -> None:
        box = self.appliance.box
        error = self.query_one("#knob-error", Static)
        if box is None:
            return
        try:
            workload = self.read_workload()
        except ApplianceError as problem:
            error.update(Text(problem.render(), style="bold red"))
            return
        error.update("")
        self.workload = workload
        self.compute(box, workload)

    @work(thread=True, exclusive=True, exit_on_error=False, group="recommend")
    def compute(self, box: Box, workload: Workload) -> None:
        recommend = self.appliance.services.recommend
        if recommend is None:
            self.post_message(RecommendationFailed(workload, "the recommender is not available"))
            return
        try:
            recommendation = recommend(box, workload)
        except ApplianceError as error:
            self.post_message(RecommendationFailed(workload, error.render()))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(RecommendationComputed(workload, recommendation))

    # -- results

    @on(RecommendationFailed)
    async def _failed(self, message: RecommendationFailed) -> None:
        if message.workload != self.workload:
            return
        self.recommendation = None
        await self.query_one("#candidates", VerticalScroll).remove_children()
        summary = Text("No recommendation: ", style="bold red")
        summary.append(message.reason, style="")
        if self.appliance.services.simulate is None:
            summary.append(
                "\nOn the Box screen (b), s simulates a GPU box to plan for.", style="dim"
            )
        self.query_one("#recommend-summary", Static).update(summary)
        self._preview()

    @on(RecommendationComputed)
    async def _computed(self, message: RecommendationComputed) -> None:
        if message.workload != self.workload:
            return  # the knobs moved on since
        recommendation = message.recommendation
        target = recommendation.target
        summary = Text.assemble(
            (f"{target.label}", "bold"),
            f" · {target.memory_bytes / 2**30:.0f} GiB per GPU · ",
            (f"{len(recommendation.candidates)} fit", "bold green"),
            ", ",
            (
                f"{len(recommendation.rejected)} rejected",
                "bold red" if recommendation.rejected else "",
            ),
        )
        if not recommendation.candidates:
            summary.append(
                "\nNothing fits: fewer users, a shorter context or a larger box.", style="bold red"
            )
        self.query_one("#recommend-summary", Static).update(summary)
        cards = self.query_one("#candidates", VerticalScroll)
        focused = isinstance(self.focused, CandidateCard)
        await cards.remove_children()
        await cards.mount_all(
            CandidateCard(rank, candidate)
            for rank, candidate in enumerate(recommendation.candidates, start=1)
        )
        self.query_one("#rejected-table", Static).update(rejected_text(recommendation))
        self.recommendation = recommendation
        self.selected = 0
        self._preview()
        if focused and recommendation.candidates:
            self.query(CandidateCard).first().focus()

    def on_descendant_focus(self, event: object) -> None:
        focused = self.focused
        if isinstance(focused, CandidateCard) and focused.rank - 1 != self.selected:
            self.selected = focused.rank - 1
            self._preview()

    def chosen_profile(self) -> ProfileChosen | None:
        recommendation = self.recommendation
        if recommendation is None or not recommendation.candidates:
            return None
        index = min(self.selected, len(recommendation.candidates) - 1)
        return ProfileChosen(
            recommendation.to_profile(index=index), recommendation.profile_comment(index)
        )

    def _preview(self) -> None:
        from appliance.profile import dump_profile

        chosen = self.chosen_profile()
        yaml = self.query_one("#profile-yaml", Static)
        if chosen is None:
            yaml.update("No candidate to write a profile for.")
            return
        pane = self.query_one("#profile", TabPane)
        pane.border_title = f"{chosen.profile.metadata.name}.yaml"
        yaml.update(Text(dump_profile(chosen.profile, comment=chosen.comment), no_wrap=True))

    # -- actions

    def action_focus_candidates(self) -> None:
        self.query_one(TabbedContent).active = "candidates-tab"
        cards = self.query(CandidateCard)
        if cards:
            cards[min(self.selected, len(cards) - 1)].focus()

    def action_focus_knobs(self) -> None:
        self.query_one("#kind", Select).focus()

    def action_tab(self, tab: str) -> None:
        """Show a tab and focus its scroll, so the arrows scroll it (and TabbedContent, which
        follows focus, does not switch back to the pane the focus was left in)."""
        tabs = self.query_one(TabbedContent)
        tabs.active = tab
        tabs.get_pane(tab).query(VerticalScroll).first().focus()

    def action_save(self) -> None:
        chosen = self.chosen_profile()
        if chosen is None:
            self.notify("Nothing to save: no candidate fits.", severity="warning")
            return
        self.save(chosen, self.appliance.services.profiles_dir)

    @work(thread=True, exclusive=True, exit_on_error=False, group="save-profile")
    def save(self, chosen: ProfileChosen, directory: Path) -> None:
        from appliance.profile import dump_profile

        path = directory / f"{chosen.profile.metadata.name}.yaml"
        path.write_text(dump_profile(chosen.profile, comment=chosen.comment), encoding="utf-8")
        self.post_message(ProfileSaved(str(path)))

    @on(ProfileSaved)
    def _saved(self, message: ProfileSaved) -> None:
        self.notify(f"Saved {message.path}. `appliance apply {message.path}` deploys it.")

    def action_plan(self) -> None:
        chosen = self.chosen_profile()
        if chosen is None:
            self.notify("Nothing to plan: no candidate fits.", severity="warning")
            return
        self.appliance.chosen = chosen
        self.appliance.action_show("deploy")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        notify_worker_failure(event)
