"""Cross-task in-context evaluation (ACL 2024): a model solves a task with demos taken from *other* tasks.

Conditions, for each target item ``x`` of task ``t`` (K = ``shots``; "best" = most similar under ``select``):

* ``zero``: no demo.
* ``cross``: K best demos of one source task ``s != t``, for every source task in the pool in turn; the
  condition's accuracy averages over sources, and each source's own accuracy fills the source x target gain
  matrix (the paper's main setting: demos of one source task).
* ``mixed``: the best demo of each of the K source tasks whose best demo is most similar.
* ``random``: K demos drawn at random (seeded per item) from the other tasks.
* ``gold`` / ``pseudo``: K best of ``pseudo_rows`` pool rows of ``t`` itself (a seeded sample), shown with their
  gold labels, or with pseudo-labels: each of those rows labelled once per source task with that source's best
  demo, by majority vote (ties: the vote of the source whose demo is most similar). The pseudo-labels' own
  accuracy is reported. A target task without pool rows skips both, with a note.

An item is never its own demo, and cross-task demos never come from the target's task. With ``options`` an
item is scored by the log-likelihood of each option after the prompt (all options on one prefill), ``mean``
per token by default (options of different lengths then compete on equal terms) or ``sum``; without, by greedy
generation and normalised exact match.

This module plans and runs the conditions; the demos are chosen in :mod:`~.select`, the prompts run in
:mod:`~.runner`, and the outcomes summed up in :mod:`~.analysis`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np

from wit_plugin.evaluation.crosstask.analysis import CrossTaskResult, accuracy_rows, activation_analysis, gain_matrix
from wit_plugin.evaluation.crosstask.prompts import Request
from wit_plugin.evaluation.crosstask.runner import Runner
from wit_plugin.evaluation.crosstask.select import (
    Selector,
    condition_requests,
    embed_inputs,
    gold_demos,
    in_task_requests,
    stable_hash,
    vote_pseudo_labels,
)
from wit_plugin.evaluation.crosstask.settings import CrossTaskSettings
from wit_plugin.evaluation.crosstask.tasks import TaskItem, by_task, usable_rows
from wit_plugin.evaluation.engine import timed

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


class CrossTaskEvaluator:
    """Cross-task accuracy as a training-time evaluator (see
    :class:`~wit_plugin.evaluation.callback.EvaluationCallback`); the files are read once."""

    name = "crosstask"

    def __init__(
        self, pool: str | PathLike[str], targets: str | PathLike[str], values: Mapping[str, Any] | None = None
    ) -> None:
        from wit_plugin.evaluation.crosstask.tasks import load_items

        (self.pool, pool_notes), (self.targets, target_notes) = (
            usable_rows(load_items(pool), "pool"),
            usable_rows(load_items(targets), "targets"),
        )
        for note in [*pool_notes, *target_notes]:
            logger.warning("cross-task evaluation: %s", note)
        self.settings = CrossTaskSettings.from_options(values)
        self.last_result: CrossTaskResult | None = None

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, float]:
        self.last_result = evaluate_crosstask(
            model, tokenizer, self.pool, self.targets, self.settings, activations=False
        )
        return self.last_result.metrics()


def evaluate_crosstask(
    model: Any,
    tokenizer: Any,
    pool: Sequence[TaskItem],
    targets: Sequence[TaskItem],
    settings: CrossTaskSettings | None = None,
    progress: Progress | None = None,
    embedding_cache_key: str | None = None,
    activations: bool | None = None,
    previous: Mapping[str, Any] | None = None,
    reuse: Sequence[str] = (),
    checkpoint: Callable[[CrossTaskResult, list[str]], None] | None = None,
) -> CrossTaskResult:
    """Evaluate ``model`` on ``targets`` under ``settings.conditions`` with demos from ``pool`` (see module doc).

    ``embedding_cache_key`` names the model's weights (:func:`~.select.model_cache_key`) so that the inputs'
    hidden states are cached on disk. The activation analysis (with ``cross``) needs every pool row's hidden
    states: ``activations=None`` runs it where ``similar`` selection computes them anyway, ``True`` always (other
    selections then embed the pool for it), ``False`` never (training-time evaluation). Rows listing an option
    twice are resolved by :func:`~.tasks.usable_rows`, with notes.

    With a ``checkpoint``, conditions run one after the other and after each it gets the result so far and the
    conditions done (without, all run in one pass: prompts shared across conditions run once). The conditions in
    ``reuse`` take their items' outcomes from ``previous`` (a trace this function wrote for the same model, files
    and settings) instead of running them, when it holds every request they make.
    """
    settings = settings or CrossTaskSettings.from_options()
    pool, pool_notes = usable_rows(pool, "pool")
    targets, target_notes = usable_rows(targets, "targets")
    if not targets:
        raise ValueError("no target left to evaluate: " + "; ".join(target_notes))
    notes, work = [*pool_notes, *target_notes], Counter()
    chosen = _limit(targets, settings.limit, settings.seed, notes)
    pool_tasks = by_task(pool)
    pseudo_sets = {
        task: _sample(pool_tasks[task], settings.pseudo_rows, settings.seed, task)
        for task in by_task(chosen)
        if task in pool_tasks and {"gold", "pseudo"} & set(settings.conditions)
    }
    queries = list(dict.fromkeys([*chosen, *(row for rows in pseudo_sets.values() for row in rows)]))
    analyse = "cross" in settings.conditions and (activations or (activations is None and settings.select == "similar"))
    if activations is None and "cross" in settings.conditions and not analyse:
        notes.append(
            f"activation analysis not run: {settings.select} selection computes no hidden states (ask for it "
            "with --activations, or activations=True: the pool is then embedded with the model)"
        )
    needs_states = settings.select == "similar" or analyse
    states = None
    if needs_states:
        with timed(work, "embed_s"):
            states = (
                embed_inputs(model, tokenizer, [p.input for p in pool], settings.batch_size, embedding_cache_key),
                embed_inputs(model, tokenizer, [q.input for q in queries], settings.batch_size, embedding_cache_key),
            )
    selector = Selector(settings, pool, queries, states)
    runner = Runner(model, tokenizer, settings, work)
    requests, pseudo_requests = [], []
    for task, items in by_task(chosen).items():
        sources = [s for s in pool_tasks if s != task]
        if {"gold", "pseudo"} & set(settings.conditions) and task not in pool_tasks:
            notes.append(f"{task}: no pool rows of this task, so no gold/pseudo in-task demos")
        for item in items:
            requests += condition_requests(item, settings, selector, sources)
        if task in pseudo_sets and "pseudo" in settings.conditions:
            for row in pseudo_sets[task]:
                for source in sources:
                    demos = selector.best(row, selector.from_task(source), 1)
                    pseudo_requests.append(Request(row, "label", gold_demos(demos), source=source))
    for condition in ("cross", "mixed", "random"):
        skipped = sorted({i.task for i in chosen} - {r.item.task for r in requests if r.condition == condition})
        if condition in settings.conditions and skipped:
            notes.append(f"{condition}: no pool rows of another task for {', '.join(skipped)}, so no {condition} demos")
    previous_items = [t for t in (previous or {}).get("items", []) if t.get("condition") in reuse]
    votes = {(r["task"], r["id"]): r["votes"] for r in (previous or {}).get("pseudo_labels", [])}
    per_condition = {c: [r for r in requests if r.condition == c] for c in settings.conditions}
    if "gold" in settings.conditions:
        per_condition["gold"] = in_task_requests(chosen, pool, pseudo_sets, selector, settings, "gold", {})
    total = sum(map(len, per_condition.values())) + len(pseudo_requests)  # pseudo demos: counted once labelled
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    def run(stage: list[str], batch: list[Request], restore: Callable[[list[Request]], bool]) -> None:
        if all(condition in reuse for condition in stage) and restore(batch):
            advance(len(batch))
        else:
            runner.run(batch, advance)

    # Saved one by one, conditions run one after the other; else all in one pass, so that a prompt prefix shared
    # across conditions (a demo block of cross and mixed, the rows of gold and pseudo) runs once.
    one_pass = checkpoint is None and not reuse
    stages = [list(settings.conditions)] if one_pass else [[condition] for condition in settings.conditions]
    evaluated: list[Request] = []
    pseudo_labels: list[dict[str, Any]] = []
    finished: list[str] = []
    for stage in stages:
        if "pseudo" in stage:
            run(["pseudo"], pseudo_requests, lambda batch: _restore_votes(batch, votes))
            pseudo_labels, labels = vote_pseudo_labels(pseudo_sets, pseudo_requests, selector)
            unlabelled = [t for t in pseudo_sets if not all(row.where in labels for row in pseudo_sets[t])]
            for task in unlabelled:
                notes.append(f"{task}: the pool has no other task to pseudo-label its rows with, so no pseudo demos")
            per_condition["pseudo"] = in_task_requests(chosen, pool, pseudo_sets, selector, settings, "pseudo", labels)
            total += len(per_condition["pseudo"])
        batch = [request for condition in stage for request in per_condition.get(condition, [])]
        run(stage, batch, lambda batch: _restore(batch, previous_items))
        evaluated += batch
        finished += stage
        if checkpoint is not None:
            results = accuracy_rows(chosen, evaluated, settings)
            checkpoint(
                CrossTaskResult(
                    settings.scoring, results, list(evaluated), gain_matrix(evaluated, results), [],
                    pseudo_labels, list(notes), settings, dict(work),
                ),
                list(finished),
            )  # fmt: skip
    results = accuracy_rows(chosen, evaluated, settings)
    matrix = gain_matrix(evaluated, results)
    activation = activation_analysis(evaluated, matrix, states, pool, queries) if analyse else []
    return CrossTaskResult(
        settings.scoring, results, evaluated, matrix, activation, pseudo_labels, notes, settings, dict(work)
    )


def _restore(requests: list[Request], traces: list[dict[str, Any]]) -> bool:
    """Fill ``requests`` with the outcomes of trace items of the same item, condition and demos (and the same
    prompt tokens); False, changing nothing, unless every request has one."""
    by_key = {(t["task"], t["id"], t["condition"], tuple((d["task"], d["id"]) for d in t["demos"])): t for t in traces}
    found = []
    for request in requests:
        demos = tuple((demo.item.task, demo.item.id) for demo in request.demos)
        trace = by_key.get((request.item.task, request.item.id, request.condition, demos))
        if trace is None:
            return False
        found.append(trace)
    for request, trace in zip(requests, found):
        request.prompt_ids = tuple(trace["prompt_ids"])
        option_ids = trace["option_ids"]
        request.option_ids = [tuple(ids) for ids in option_ids] if option_ids is not None else None
        request.option_logprobs = trace["option_logprobs"]
        request.prediction = trace["prediction"]
        request.generated = trace.get("generated")
    return True


def _restore_votes(requests: list[Request], votes: dict[tuple[str, str], dict[str, str]]) -> bool:
    """Pseudo-labelling requests' predictions from a trace's ``pseudo_labels`` votes (all or nothing)."""
    found = [votes.get((r.item.task, r.item.id), {}).get(r.source or "") for r in requests]
    if any(prediction is None for prediction in found):
        return False
    for request, prediction in zip(requests, found):
        request.prediction = prediction
    return True


def _sample(items: list[TaskItem], count: int, seed: int, salt: str) -> list[TaskItem]:
    """``count`` items picked with a seeded generator, kept in file order."""
    if len(items) <= count:
        return list(items)
    picked = np.random.default_rng([seed, stable_hash(salt)]).choice(len(items), size=count, replace=False)
    return [items[i] for i in sorted(picked.tolist())]


def _limit(targets: Sequence[TaskItem], limit: int | None, seed: int, notes: list[str]) -> list[TaskItem]:
    chosen = []
    for task, items in by_task(targets).items():
        if limit is not None and len(items) > limit:
            notes.append(f"{task}: {limit} of {len(items)} targets evaluated (--limit, seeded sample)")
            items = _sample(items, limit, seed, f"limit|{task}")
        chosen += items
    return chosen
