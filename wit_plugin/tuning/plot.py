"""The tuning at a glance: each trial's objective in order (pruned trials at their last reported value, hollow;
the best so far as a line), and the trials on the map of the first two weights (λp × λr), coloured by objective,
the best starred. For several objectives, a third panel: the first two objectives against each other, the
Pareto front joined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {"wit_prompt_weight": "λp (wit_prompt_weight)", "wit_response_weight": "λr (wit_response_weight)"}


def _first(entry: dict[str, Any], name: str) -> float | None:
    objective = entry.get("objective")
    return objective.get(name) if isinstance(objective, dict) else objective


def _last_reported(entry: dict[str, Any]) -> float | None:
    values = list((entry.get("intermediate") or {}).values())
    return values[-1] if values else None


def draw(results: dict[str, Any]) -> Any:
    from wit_plugin.figures import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    objectives = results["objectives"]
    name, direction = objectives[0]["name"], objectives[0]["direction"]
    trials = results["trials"]
    panels = 3 if len(objectives) > 1 else 2
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.6), dpi=120)
    axis = axes[0]
    done = [(e["number"], _first(e, name)) for e in trials if e["state"] == "complete"]
    if done:
        axis.plot(*zip(*done), "o", color="tab:blue", label="complete")
        best, line = None, []
        for number, value in done:
            better = best is None or (value < best if direction == "minimize" else value > best)
            best = value if better else best
            line.append((number, best))
        axis.step(*zip(*line), where="post", color="tab:green", label="best so far")
    pruned = [(e["number"], _last_reported(e)) for e in trials if e["state"] == "pruned" and _last_reported(e)]
    if pruned:
        axis.plot(*zip(*pruned), "o", mfc="none", color="tab:orange", label="pruned (last reported)")
    for entry in (e for e in trials if e["state"] == "failed"):
        axis.axvline(entry["number"], color="tab:red", alpha=0.3, linewidth=4)
    if any(e["state"] == "failed" for e in trials):
        axis.plot([], [], color="tab:red", alpha=0.3, linewidth=4, label="failed")
    axis.set_xlabel("trial")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(f"{name} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    axis.set_title("objective per trial")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    keys = list(results["space"])
    axis = axes[1]
    x_key, y_key = keys[0], keys[1] if len(keys) > 1 else None
    points = [e for e in trials if x_key in e["weights"] and e["state"] in ("complete", "pruned")]
    complete = [e for e in points if e["state"] == "complete"]

    def y(entry: dict[str, Any]) -> float:
        return entry["weights"][y_key] if y_key else _first(entry, name)

    if complete:
        scatter = axis.scatter(
            [e["weights"][x_key] for e in complete], [y(e) for e in complete],
            c=[_first(e, name) for e in complete], cmap="viridis_r" if direction == "minimize" else "viridis", s=60,
        )  # fmt: skip
        figure.colorbar(scatter, ax=axis, label=name)
    pruned_points = [e for e in points if e["state"] == "pruned"]
    if pruned_points and y_key:
        axis.scatter([e["weights"][x_key] for e in pruned_points], [y(e) for e in pruned_points], marker="x",
                     color="grey", label="pruned")  # fmt: skip
    best = results.get("best")
    if best and x_key in best["weights"]:
        axis.scatter([best["weights"][x_key]], [y(best)], marker="*", s=300, facecolors="none", edgecolors="red",
                     label=f"best (trial {best['number']})")  # fmt: skip
    for entry in points:
        axis.annotate(str(entry["number"]), (entry["weights"][x_key], y(entry)), fontsize=7, xytext=(4, 4),
                      textcoords="offset points")  # fmt: skip
    space = results["space"]

    def span(key: str) -> tuple[float, float]:  # the whole range searched, a margin around it
        low, high = space[key]
        return low - 0.05 * (high - low), high + 0.05 * (high - low)

    axis.set_xlim(*span(x_key))
    if y_key:
        axis.set_ylim(*span(y_key))
    axis.set_xlabel(LABELS.get(x_key, x_key))
    axis.set_ylabel(LABELS.get(y_key, y_key) if y_key else name)
    axis.set_title("trials on the weights (number beside each)")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    if panels == 3:
        axis = axes[2]
        second = objectives[1]["name"]
        axis.scatter([_first(e, name) for e in complete], [_first(e, second) for e in complete], label="complete")
        front = sorted(results.get("pareto_front") or [], key=lambda e: _first(e, name))
        if front:
            axis.plot([_first(e, name) for e in front], [_first(e, second) for e in front], "r-o", label="Pareto front")
        axis.set_xlabel(name)
        axis.set_ylabel(second)
        axis.set_title("objectives against each other")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot(results: dict[str, Any], path: Path) -> Path:
    from wit_plugin.figures import save_png

    return save_png(draw(results), path)
