"""What a cross-task evaluation's requests add up to: accuracies with intervals, the source x target gain
matrix, the activation analysis, and the result that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from wit_plugin.evaluation.crosstask.prompts import Request
from wit_plugin.evaluation.crosstask.select import InputStates, stable_hash
from wit_plugin.evaluation.crosstask.settings import CrossTaskSettings
from wit_plugin.evaluation.crosstask.tasks import TaskItem, by_task
from wit_plugin.evaluation.stats import bootstrap_ci, spearman


@dataclass
class CrossTaskResult:
    """Accuracies per (task, condition), the source x target gain matrix, the activation analysis, every
    evaluated item (``items``) and the pseudo-labels; ``to_dict`` is the trace JSON."""

    scoring: str
    results: list[dict[str, Any]]
    items: list[Request]
    gain_matrix: dict[str, Any]
    activation: list[dict[str, Any]]
    pseudo_labels: list[dict[str, Any]]
    notes: list[str]
    settings: CrossTaskSettings
    work: dict[str, float] = field(default_factory=dict)

    def accuracy(self, task: str, condition: str) -> float | None:
        for row in self.results:
            if row["task"] == task and row["condition"] == condition:
                return row["accuracy"]
        return None

    def metrics(self, prefix: str = "crosstask") -> dict[str, float]:
        """Per task and condition, and per condition averaged over tasks: what a training log shows."""
        logs = {f"{prefix}/{r['task']}/{r['condition']}": r["accuracy"] for r in self.results}
        for condition in self.settings.conditions:
            values = [r["accuracy"] for r in self.results if r["condition"] == condition]
            if values:
                logs[f"{prefix}/{condition}"] = float(np.mean(values))
        return logs

    def to_dict(self) -> dict[str, Any]:
        return {
            "scoring": self.scoring,
            "results": self.results,
            "items": [request.trace() for request in self.items],
            "gain_matrix": self.gain_matrix,
            "activation": self.activation,
            "pseudo_labels": self.pseudo_labels,
            "notes": self.notes,
            "settings": self.settings.__dict__,
            "work": self.work,
        }

    def write_trace(self, path: str | PathLike[str]) -> Path:
        from wit_plugin.evaluation.resume import write_json

        return write_json(Path(path), self.to_dict(), indent=None)


def accuracy_rows(
    targets: list[TaskItem], requests: list[Request], settings: CrossTaskSettings
) -> list[dict[str, Any]]:
    """Accuracy per (task, condition) with a 95% bootstrap interval over items (an item's value under
    ``cross`` is its mean over source tasks)."""
    outcome: dict[tuple[str, str], dict[str, list[float]]] = {}
    for request in requests:
        per_item = outcome.setdefault((request.item.task, request.condition), {})
        per_item.setdefault(request.item.where, []).append(float(request.correct))
    rows = []
    for task in by_task(targets):
        zero_items = outcome.get((task, "zero"))
        zero = float(np.mean([np.mean(v) for v in zero_items.values()])) if zero_items else None
        for condition in settings.conditions:
            per_item = outcome.get((task, condition))
            if not per_item:
                continue
            values = [float(np.mean(v)) for v in per_item.values()]
            accuracy = float(np.mean(values))
            seed = stable_hash(settings.seed, task, condition) % 2**32
            low, high = bootstrap_ci(values, seed)
            row = {
                "task": task,
                "condition": condition,
                "accuracy": accuracy,
                "n": sum(len(v) for v in per_item.values()),
                "items": len(values),
                "ci95": [low, high],
            }
            if zero is not None and condition != "zero":
                row["gain"] = accuracy - zero
            rows.append(row)
    return rows


def gain_matrix(requests: list[Request], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of each source task's demos on each target task, minus the target's zero-shot accuracy."""
    zero = {r["task"]: r["accuracy"] for r in results if r["condition"] == "zero"}
    cells: dict[tuple[str, str], list[float]] = {}
    for request in requests:
        if request.condition == "cross" and request.source is not None:
            cells.setdefault((request.source, request.item.task), []).append(float(request.correct))
    sources = sorted({s for s, _ in cells})
    targets = sorted({t for _, t in cells})
    accuracy = [[float(np.mean(cells[(s, t)])) if (s, t) in cells else None for t in targets] for s in sources]
    gain = [[None if a is None or t not in zero else a - zero[t] for a, t in zip(row, targets)] for row in accuracy]
    return {"sources": sources, "targets": targets, "accuracy": accuracy, "gain": gain}


def activation_analysis(
    requests: list[Request],
    matrix: dict[str, Any],
    states: tuple[InputStates, InputStates],
    pool: list[TaskItem],
    queries: list[TaskItem],
) -> list[dict[str, Any]]:
    """Per layer: Spearman correlation, over (source, target) pairs, between the source's gain and the mean
    cosine of its demos' and the targets' hidden states at that layer."""
    pool_row = {item.where: index for index, item in enumerate(pool)}
    query_row = {item.where: index for index, item in enumerate(queries)}
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for request in requests:
        if request.condition == "cross" and request.source is not None:
            for demo in request.demos:
                pairs.setdefault((request.source, request.item.task), []).append(
                    (query_row[request.item.where], pool_row[demo.item.where])
                )
    gains = {
        (s, t): g
        for s, row in zip(matrix["sources"], matrix["gain"])
        for t, g in zip(matrix["targets"], row)
        if g is not None
    }
    keys = [key for key in pairs if key in gains]
    if not keys:
        return []
    pool_states, query_states = states[0].states, states[1].states
    layers = []
    for layer in range(pool_states.shape[1]):
        similarity = []
        for key in keys:
            q, p = np.array(pairs[key]).T
            a, b = query_states[q, layer].astype(np.float64), pool_states[p, layer].astype(np.float64)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            similarity.append(float(np.mean((a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0))))
        layers.append(
            {
                "layer": layer,
                "spearman": spearman([gains[k] for k in keys], similarity),
                "pairs": len(keys),
                "mean_cosine": float(np.mean(similarity)),
            }
        )
    return layers
