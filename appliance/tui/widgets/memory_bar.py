"""A stacked bar of one GPU's memory as the sizing model splits it at the engine's start-up.

Segments, left to right: weights, activations (with vLLM's non-torch memory), CUDA graphs, KV
cache, TEI (or any other process on the card), and what stays free. The numbers are the
estimate the recommender computed (vLLM's `MemoryEstimate`, or SGLang's, whose budget leaves
activations and CUDA graphs as one share outside `mem_fraction_static`); nothing is
re-estimated here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

if TYPE_CHECKING:
    from appliance.sglang_sizing import SglangMemoryEstimate
    from appliance.sizing import MemoryEstimate

    Estimate = MemoryEstimate | SglangMemoryEstimate

# (label, style): chosen to stay apart in both the dark and the light theme.
SEGMENTS = (
    ("weights", "bold white on dark_blue"),
    ("activations", "black on yellow"),
    ("CUDA graphs", "black on magenta"),
    ("KV cache", "black on green"),
    ("TEI", "black on cyan"),
    ("free", "black on grey62"),
)


def memory_split(estimate: Estimate) -> tuple[tuple[str, float], ...]:
    """The GiB of each segment; they add up to the card's memory."""
    from appliance.sglang_sizing import SglangMemoryEstimate

    if isinstance(estimate, SglangMemoryEstimate):
        held = (
            estimate.static_budget_gib
            + estimate.outside_fraction_gib
            + estimate.other_processes_gib
        )
        return (
            ("weights", estimate.weights_gib),
            ("act+graphs", estimate.outside_fraction_gib),  # SGLang sizes them as one share
            ("CUDA graphs", 0.0),
            ("KV cache", estimate.kv_cache_gib),
            ("TEI", estimate.other_processes_gib),
            ("free", max(0.0, estimate.gpu_memory_gib - held)),
        )
    used = (
        estimate.weights_gib
        + estimate.activation_gib
        + estimate.non_torch_gib
        + estimate.cuda_graph_gib
        + estimate.kv_cache_gib
        + estimate.other_processes_gib
    )
    return (
        ("weights", estimate.weights_gib),
        ("activations", estimate.activation_gib + estimate.non_torch_gib),
        ("CUDA graphs", estimate.cuda_graph_gib),
        ("KV cache", estimate.kv_cache_gib),
        ("TEI", estimate.other_processes_gib),
        ("free", max(0.0, estimate.gpu_memory_gib - used)),
    )


def memory_bar(estimate: Estimate, width: int) -> tuple[Text, frozenset[str]]:
    """The bar, `width` cells wide, and the segments whose label fitted inside it.

    A segment too small for a cell keeps none; the legend names it instead.
    """
    split = memory_split(estimate)
    total = sum(gib for _, gib in split) or 1.0
    cells = [round(gib / total * width) for _, gib in split]
    # Rounding may miss or overshoot by a few cells: the largest segment absorbs it.
    largest = max(range(len(cells)), key=lambda index: split[index][1])
    cells[largest] += width - sum(cells)
    bar = Text()
    labelled: set[str] = set()
    for (label, gib), count, (_, style) in zip(split, cells, SEGMENTS, strict=True):
        if count <= 0:
            continue
        text = f"{label} {gib:.1f}"
        if count >= len(text) + 2:
            labelled.add(label)
        else:
            text = ""
        bar.append(text.center(count), style=style)
    return bar, frozenset(labelled)


SHORT = {"activations": "act", "CUDA graphs": "graphs", "KV cache": "KV"}


def memory_legend(estimate: Estimate, skip: frozenset[str] = frozenset()) -> Text:
    """The GiB of the segments not labelled in the bar, each in its colour, and the total."""
    legend = Text()
    for (label, gib), (_, style) in zip(memory_split(estimate), SEGMENTS, strict=True):
        if label in skip or (gib <= 0 and label != "free"):
            continue
        digits = 2 if 0 < gib < 0.1 else 1
        legend.append("■", style=style.split(" on ")[-1])
        legend.append(f"{SHORT.get(label, label)} {gib:.{digits}f} ")
    legend.append(f"of {estimate.gpu_memory_gib:.1f} GiB", style="dim")
    return legend


class MemoryBar(Widget):
    """The bar over the widget's whole width, with its legend underneath."""

    DEFAULT_CSS = """
    MemoryBar {
        height: 2;
        width: 1fr;
    }
    """

    estimate: reactive[Estimate | None] = reactive(None, layout=False)

    def __init__(self, estimate: Estimate | None = None, **kwargs: str | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.set_reactive(MemoryBar.estimate, estimate)

    def render(self) -> Text:
        if self.estimate is None:
            return Text("")
        text, labelled = memory_bar(self.estimate, max(10, self.size.width))
        text.append("\n")
        text.append_text(memory_legend(self.estimate, skip=labelled))
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text
