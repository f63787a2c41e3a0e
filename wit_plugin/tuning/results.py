"""``results.json``, ``best.yml`` and the plot, read from the study (the one record of the trials, which any
worker may have run).

``results.json``: ``{"study", "storage", "eval_data", "objectives": [{"name", "direction"}], "space", "trials":
[{"number", "state", "weights", "objective", "run", ...}], "best": {...}}``; ``state`` is ``complete``, ``pruned``,
``failed`` (with its ``error``) or ``running``; ``objective`` is a number (a dict by name for several
objectives, whose ``pareto_front`` lists the non-dominated trials, and whose ``best`` is the front's best on the
first objective). ``best.yml``: the best trial's ``wit_*`` keys, ready to paste into a config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from wit_plugin.tuning import study as studies

log = logging.getLogger(__name__)
RESULTS, BEST, PLOT = "results.json", "best.yml", "tune.png"
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def _objective(trial: Any, names: list[str]) -> Any:
    """A complete trial's score (Optuna gives a pruned trial its last intermediate value: not a score)."""
    if trial.values is None or trial.state.name != "COMPLETE":
        return None
    return trial.values[0] if len(names) == 1 else dict(zip(names, trial.values))


def _fate(retry: Any) -> str:
    """What became of a trial failed without an error of its own, from the trial that repeats it (if any)."""
    if retry is None:
        return "not queued again"
    if retry.state.name == "WAITING":
        return f"its weights are queued again (trial {retry.number}), to run when the tuning resumes or --trials grows"
    return f"retried as trial {retry.number}"


def trial_entry(trial: Any, names: list[str], grace_s: int | None, retry: Any = None) -> dict[str, Any]:
    """One trial of results.json; ``retry``: the trial that runs it again, if any (queued or run). ``error``,
    ``pruned_at_step`` and ``retry_of`` are always there (None when they do not apply)."""
    attrs = trial.user_attrs
    entry: dict[str, Any] = {
        "number": trial.number,
        "state": STATES[trial.state.name],
        "weights": dict(trial.params),
        "objective": _objective(trial, names),
        "run": attrs.get(studies.RUN),
        "error": None,
        "pruned_at_step": attrs.get(studies.PRUNED_AT) if trial.state.name == "PRUNED" else None,
        "retry_of": studies.retry_of(trial),
    }
    if trial.state.name == "FAIL":
        if attrs.get(studies.INTERRUPTED):
            entry["error"] = f"interrupted (Ctrl-C); {_fate(retry)}"
        else:
            entry["error"] = attrs.get(studies.ERROR) or (
                f"its worker stopped beating (no heartbeat for {grace_s} s: killed or lost); {_fate(retry)}"
            )
    if trial.intermediate_values:
        entry["intermediate"] = {str(step): value for step, value in sorted(trial.intermediate_values.items())}
    for key in (studies.STEPS, studies.ROW, studies.WIT_KEYS):
        if attrs.get(key) is not None:
            entry[key] = attrs[key]
    if trial.datetime_start and trial.datetime_complete:
        entry["seconds"] = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
    return entry


def document(study: Any, tuning: Any) -> dict[str, Any]:
    names = [o.name for o in tuning.objectives]
    grace = studies.GRACE_FACTOR * tuning.heartbeat_s if tuning.heartbeat_s else None
    every = study.get_trials(deepcopy=False)
    retries: dict[int, Any] = {}  # trial number -> the trial repeating it (queued ones too)
    for trial in every:
        if studies.repeats(trial) is not None:
            retries.setdefault(studies.repeats(trial), trial)
    trials = [
        trial_entry(t, names, grace, retries.get(t.number))
        for t in every
        if t.state.name in STATES and not t.user_attrs.get(studies.SURPLUS)
    ]
    result: dict[str, Any] = {
        "study": tuning.study,
        "storage": studies.shown_url(tuning.storage_url),
        "eval_data": str(tuning.settings.eval_data) if tuning.settings else None,
        "objectives": [{"name": o.name, "direction": o.direction} for o in tuning.objectives],
        "space": {key: [r.low, r.high] for key, r in tuning.space.items()},
        "trials": trials,
        "best": None,
    }
    by_number = {entry["number"]: entry for entry in trials}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return result
    if len(names) == 1:
        result["best"] = by_number[study.best_trial.number]
    else:
        front = sorted(study.best_trials, key=lambda t: t.number)
        result["pareto_front"] = [by_number[t.number] for t in front]
        sign = 1 if tuning.objectives[0].direction == "minimize" else -1
        result["best"] = by_number[min(front, key=lambda t: sign * t.values[0]).number]
    return result


def weights_text(weights: Mapping[str, float]) -> str:
    """Weights for people (4 significant digits, λp/λr for the group keys): the console and best.yml's comment."""
    short = {"wit_prompt_weight": "λp", "wit_response_weight": "λr"}
    return " ".join(f"{short.get(key, key)}={value:.4g}" for key, value in weights.items())


def score_text(objective: float | Mapping[str, float], names: list[str]) -> str:
    """A trial's objective(s) for people: ``response_ce 2.6922``."""
    values = objective if isinstance(objective, Mapping) else {names[0]: objective}
    return ", ".join(f"{name} {value:.4f}" for name, value in values.items())


def best_yaml(best: dict[str, Any], names: list[str]) -> str:
    import yaml

    header = (
        f"# wit tune: best trial {best['number']} ({score_text(best['objective'], names)}), run {best['run']}\n"
        f"# {weights_text(best['weights'])} (the keys below hold the exact values trained)\n"
    )
    return header + yaml.safe_dump(best.get(studies.WIT_KEYS) or best["weights"], sort_keys=False)


def write_outputs(study: Any, tuning: Any) -> dict[str, Any]:
    """Rewrites results.json, best.yml (once a trial completed) and the plot; returns results.json's document."""
    from wit_plugin.evaluation.resume import write_json

    result = document(study, tuning)
    write_json(tuning.out / RESULTS, result)
    if result["best"] is not None:
        (tuning.out / BEST).write_text(best_yaml(result["best"], [o.name for o in tuning.objectives]), encoding="utf-8")
    if tuning.plot:
        try:
            from wit_plugin.tuning.plot import plot

            plot(result, tuning.out / PLOT)
        except ImportError as error:  # matplotlib is the `eval` extra
            log.info("wit tune: no plot (%s; pip install 'wit_plugin[eval]')", error)
    return result
