"""What a cross-task evaluation shows: tables in the terminal and plots (gain heat map, accuracy bars)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from wit_plugin.evaluation.crosstask.evaluate import CrossTaskResult


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


def activation_table(result: CrossTaskResult) -> Table:
    """Per layer: Spearman correlation between a source's gain and its demos' hidden-state similarity."""
    from rich.table import Table

    table = Table(title="gain vs demo/target hidden-state cosine, per layer (Spearman over source-target pairs)")
    for column in ("layer", "spearman", "mean cosine", "pairs"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in result.activation:
        rho = "–" if row["spearman"] is None else f"{row['spearman']:+.2f}"
        table.add_row(str(row["layer"]), rho, f"{row['mean_cosine']:.3f}", str(row["pairs"]))
    return table


def plot(result: CrossTaskResult, path: Path) -> Path:
    """Accuracy per task and condition (bars with 95% intervals) beside the source x target gain heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(dict.fromkeys(row["task"] for row in result.results))
    conditions = [c for c in result.settings.conditions if any(r["condition"] == c for r in result.results)]
    matrix = result.gain_matrix
    with_matrix = bool(matrix["sources"])
    figure, axes = plt.subplots(
        1, 2 if with_matrix else 1, figsize=(13 if with_matrix else 8, 4.8), dpi=120, squeeze=False
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
    bars.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    bars.set_ylabel("accuracy (%)")
    bars.set_title("accuracy per target task (95% bootstrap CI)")
    bars.legend(fontsize=8)
    if with_matrix:
        heat = axes[0][1]
        gains = np.array([[np.nan if g is None else 100 * g for g in row] for row in matrix["gain"]], dtype=float)
        limit = np.nanmax(np.abs(gains)) if np.isfinite(gains).any() else 1.0
        image = heat.imshow(gains, cmap="RdBu", vmin=-limit, vmax=limit)
        heat.set_xticks(range(len(matrix["targets"])), matrix["targets"], rotation=30, ha="right")
        heat.set_yticks(range(len(matrix["sources"])), matrix["sources"])
        heat.set_xlabel("target task")
        heat.set_ylabel("source task of the demos")
        heat.set_title("gain over zero-shot (points)")
        for (i, j), value in np.ndenumerate(gains):
            if np.isfinite(value):
                heat.text(j, i, f"{value:+.0f}", ha="center", va="center", fontsize=7)
        figure.colorbar(image, ax=heat, shrink=0.8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
