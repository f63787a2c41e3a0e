"""What a trial scores: numbers of ``wit compare``'s row for the trial's run folder, computed by the same code
(:func:`wit_plugin.evaluation.compare.compare_runs` on the finished run, :func:`~.compare.evaluate_model` on the
model in training for the intermediate scores), so a trial's objective is the number ``wit compare`` prints."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wit_plugin.roles import Role


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "minimize" | "maximize"
    needs: str | None  # the compare input it needs: "posix", "crosstask" or None (held-out CE only)
    read: Callable[[Mapping[str, Any]], float | None]
    help: str


def _ce(role: Role) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda row: row.get("eval", {}).get(f"loss_{role.label}")


def _crosstask(row: Mapping[str, Any]) -> float | None:
    conditions = [value for key, value in row.get("crosstask_pct", {}).items() if "/" not in key]
    return sum(conditions) / len(conditions) if conditions else None


OBJECTIVES = {
    objective.name: objective
    for objective in (
        Objective("response_ce", "minimize", None, _ce(Role.RESPONSE), "held-out CE of response tokens"),
        Objective("instruction_ce", "minimize", None, _ce(Role.INSTRUCTION), "held-out CE of instruction tokens"),
        Objective("eot_ce", "minimize", None, _ce(Role.EOT), "held-out CE of end-of-turn tokens"),
        Objective("posix", "minimize", "posix", lambda row: row.get("posix"), "POSIX prompt sensitivity (--posix)"),
        Objective("crosstask", "maximize", "crosstask", _crosstask, "cross-task accuracy %, mean of the conditions"),
    )
}


def parse_objectives(text: str) -> list[Objective]:
    """``response_ce`` or a comma-separated list (several: a multi-objective study, its Pareto front)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OBJECTIVES]
    if unknown or not names:
        raise ValueError(f"--objective {text!r}: unknown {unknown or 'empty'}; choose from {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--objective {text!r} names one objective twice")
    return [OBJECTIVES[name] for name in names]


def check_inputs(objectives: Sequence[Objective], given: Mapping[str, Any]) -> None:
    """Each objective's compare inputs are given (POSIX sets for ``posix``, a pool and targets for ``crosstask``);
    ``given``: CompareSettings' fields by name (those set)."""
    for objective in objectives:
        if objective.needs == "posix" and not given.get("posix"):
            raise ValueError(f"--objective {objective.name} needs --posix (the prompt sets POSIX is measured on)")
        if objective.needs == "crosstask" and not (given.get("pool") and given.get("targets")):
            raise ValueError(f"--objective {objective.name} needs --pool and --targets")


def values(objectives: Sequence[Objective], row: Mapping[str, Any], where: str) -> list[float]:
    """The objectives' values in a compare row; a missing one (a role the eval data lacks) is an error naming
    ``where``."""
    if "error" in row:
        raise RuntimeError(f"{where}: evaluation failed: {row['error']}")
    found = []
    for objective in objectives:
        value = objective.read(row)
        if value is None:
            raise ValueError(f"{where}: no {objective.name} in its evaluation (does --eval-data have such tokens?)")
        found.append(float(value))
    return found


def score_run(folder: Path, objectives: Sequence[Objective], settings: Any) -> tuple[list[float], dict[str, Any]]:
    """The objectives of a finished run folder, and its whole ``wit compare`` row."""
    from wit_plugin.evaluation.compare import compare_runs

    row = compare_runs([folder], settings)["runs"][0]
    return values(objectives, row, str(folder)), row


def score_model(
    model: Any, tokenizer: Any, taggings: Sequence[dict[str, Any]], objective: Objective, settings: Any, rows: Any
) -> float:
    """One objective of a model in training (the trainer's own model), as compare scores a loaded run."""
    from wit_plugin.evaluation.compare import evaluate_model

    return values([objective], evaluate_model("trial", model, tokenizer, taggings, settings, rows), "trial")[0]
