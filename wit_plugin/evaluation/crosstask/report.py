"""What a cross-task evaluation shows: tables in the terminal and plots (gain heat map, accuracy bars)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wit_plugin.evaluation.stats import SPEARMAN_MIN_PAIRS

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

    from wit_plugin.evaluation.crosstask.analysis import CrossTaskResult


def _points(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def results_table(result: CrossTaskResult) -> Table:
    """Accuracy per target task and condition, its gain over zero-shot and its 95% bootstrap interval."""
    from rich.table import Table

    table = Table(title=f"cross-task accuracy (%, scoring: {result.scoring})", title_justify="left")
    for column, justify in (("task", "left"), ("condition", "left"), ("acc", "right"), ("gain", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    previous = None
    for row in result.results:
        task = row["task"] if row["task"] != previous else ""
        previous = row["task"]
        low, high = row["ci95"]
        table.add_row(
            task,
            row["condition"],
            _points(row["accuracy"]),
            _points(row.get("gain"), signed=True),
            f"{_points(low)}–{_points(high)}",
            str(row["n"]),
        )
    return table


def gain_table(result: CrossTaskResult) -> Table:
    """Source task (rows) x target task (columns): accuracy gain over zero-shot, in points."""
    from rich.table import Table

    matrix = result.gain_matrix
    table = Table(title="gain over zero-shot by source task (rows) on target task (columns), points")
    table.add_column("source \\ target", no_wrap=True)
    for target in matrix["targets"]:
        table.add_column(target, justify="right", no_wrap=True)
    for source, gains in zip(matrix["sources"], matrix["gain"]):
        table.add_row(source, *(_points(g, signed=True) for g in gains))
    return table


def activation_note(result: CrossTaskResult) -> str | None:
    """Why the activation analysis has no per-layer correlation to show, or ``None`` when it has one: a table of
    dashes (or no table) would otherwise leave the reader guessing."""
    rows = result.activation
    if not rows:
        if "cross" not in result.settings.conditions:
            return "activation analysis: not run; it needs the cross condition (--conditions ...,cross)"
        if not result.gain_matrix["sources"]:
            return "activation analysis: not run; no (source, target) pair has both zero-shot and cross results"
        return "activation analysis: not run (no hidden states of the demos and targets were computed)"
    pairs = rows[0]["pairs"]
    if pairs < SPEARMAN_MIN_PAIRS:
        return (
            f"activation analysis: per-layer table skipped; only {pairs} (source, target) pair(s) with a gain, and a "
            f"rank correlation needs at least {SPEARMAN_MIN_PAIRS} (k tasks give k(k-1) pairs)"
        )
    if all(row["spearman"] is None for row in rows):
        return (
            f"activation analysis: per-layer table skipped; the gain is the same on all {pairs} (source, target) "
            "pairs, so it has no rank correlation with anything"
        )
    return None


def activation_table(result: CrossTaskResult) -> Table:
    """Per layer: Spearman correlation between a source's gain and its demos' hidden-state similarity."""
    from rich.table import Table

    table = Table(title="gain vs demo/target hidden-state cosine, per layer (Spearman over source-target pairs)")
    for column in ("layer", "spearman", "mean cosine", "pairs"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in result.activation:
        rho = "–" if row["spearman"] is None else f"{row['spearman']:+.2f}"
        table.add_row(str(row["layer"]), rho, f"{row['mean_cosine']:.3f}", str(row["pairs"]))
    if any(row["spearman"] is None for row in result.activation):
        table.caption = "–: that layer's cosine is the same for every pair (no rank correlation)"
    return table


def wrap_label(name: str, width: int = 12) -> str:
    """A task name over lines of about ``width`` characters, broken after ``_`` or ``-``: read horizontally,
    centred under its bars, instead of slanted and shifted off them."""
    parts = re.split(r"(?<=[_\-\s])", name)
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += part
    return "\n".join([*lines, line.rstrip()])


def text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (WCAG relative luminance)."""

    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(c) for c in rgba[:3])
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    # contrast with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05): equal at L = 0.179
    return "black" if luminance > 0.179 else "white"


def figure(result: CrossTaskResult) -> Figure:
    """Accuracy per task and condition (bars with 95% intervals) beside the source x target gain heat map."""
    import matplotlib

    from wit_plugin.figures import pyplot

    plt = pyplot()
    import numpy as np

    tasks = list(dict.fromkeys(row["task"] for row in result.results))
    conditions = [c for c in result.settings.conditions if any(r["condition"] == c for r in result.results)]
    matrix = result.gain_matrix
    with_matrix = bool(matrix["sources"])
    bars_width = max(6.0, 1.0 * len(tasks) + 2.5)
    heat_width = max(5.0, 0.9 * len(matrix["targets"]) + 3.5) if with_matrix else 0.0
    height = 4.8 + (0.9 * len(matrix["sources"]) - 4 if with_matrix and len(matrix["sources"]) > 5 else 0)
    figure, axes = plt.subplots(
        1,
        2 if with_matrix else 1,
        figsize=(bars_width + heat_width, height),
        dpi=120,
        squeeze=False,
        gridspec_kw={"width_ratios": [bars_width, heat_width] if with_matrix else [1]},
    )
    bars = axes[0][0]
    width = 0.8 / max(len(conditions), 1)
    for k, condition in enumerate(conditions):
        rows = {r["task"]: r for r in result.results if r["condition"] == condition}
        x = np.arange(len(tasks)) + (k - (len(conditions) - 1) / 2) * width
        values = [100 * rows[t]["accuracy"] if t in rows else np.nan for t in tasks]
        errors = [
            [100 * (rows[t]["accuracy"] - rows[t]["ci95"][0]) if t in rows else 0 for t in tasks],
            [100 * (rows[t]["ci95"][1] - rows[t]["accuracy"]) if t in rows else 0 for t in tasks],
        ]
        bars.bar(x, values, width, yerr=errors, capsize=2, label=condition)
    bars.set_xticks(range(len(tasks)), [wrap_label(t) for t in tasks], fontsize=8, ha="center")
    bars.set_xlim(-0.5, len(tasks) - 0.5)
    bars.set_ylim(0, 105)  # room for an interval's cap at 100%
    bars.set_yticks(range(0, 101, 20))
    bars.set_ylabel("accuracy (%)")
    bars.set_title("accuracy per target task (95% bootstrap CI)")
    # above the axes, not over the bars: "best" still covers a bar when every spot holds one
    bars.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=min(len(conditions), 6), frameon=False)
    if with_matrix:
        heat = axes[0][1]
        gains = np.array([[np.nan if g is None else 100 * g for g in row] for row in matrix["gain"]], dtype=float)
        limit = np.nanmax(np.abs(gains)) if np.isfinite(gains).any() else 1.0
        colours = matplotlib.colormaps["RdBu"].with_extremes(bad="0.8")  # grey: no cross result (a task and itself)
        image = heat.imshow(gains, cmap=colours, vmin=-(limit or 1.0), vmax=limit or 1.0)
        heat.set_xticks(range(len(matrix["targets"])), [wrap_label(t) for t in matrix["targets"]], fontsize=8)
        heat.set_yticks(range(len(matrix["sources"])), matrix["sources"], fontsize=8)
        heat.set_xlabel("target task")
        heat.set_ylabel("source task of the demos")
        heat.set_title("gain over zero-shot (points)")
        for (i, j), value in np.ndenumerate(gains):
            if np.isfinite(value):
                colour = text_colour(image.cmap(image.norm(value)))
                heat.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=7, color=colour)
        figure.colorbar(image, ax=heat, shrink=0.8, label="points")
    figure.tight_layout()
    return figure


def plot(result: CrossTaskResult, path: Path) -> Path:
    """The :func:`figure` as a PNG at ``path``."""
    from wit_plugin.figures import save_png

    return save_png(figure(result), path)
