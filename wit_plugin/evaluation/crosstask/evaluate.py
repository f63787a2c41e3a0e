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
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wit_plugin import options as wit_options
from wit_plugin.evaluation.crosstask.prompts import Demo, as_prompt, continuation, normalise, prompt_text
from wit_plugin.evaluation.crosstask.select import InputStates, embed_inputs, selection_scores, stable_hash, top_k
from wit_plugin.evaluation.crosstask.tasks import TaskItem, by_task, usable_rows
from wit_plugin.evaluation.engine import (
    SpecialIds,
    Tokens,
    eval_mode,
    greedy,
    option_scores,
    partition,
    prefill,
    render_prompt,
    score,
    score_tree,
    timed,
    tree_attention,
)
from wit_plugin.evaluation.stats import bootstrap_ci, spearman

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
CONDITIONS = wit_options.CROSSTASK_CONDITIONS


@dataclass(frozen=True)
class CrossTaskSettings:
    """The evaluation's knobs; defaults are the ``wit_crosstask_*`` options' (:mod:`wit_plugin.options`)."""

    conditions: tuple[str, ...]
    shots: int
    select: str
    scoring: str
    limit: int | None
    pseudo_rows: int
    seed: int
    max_new_tokens: int
    chat: bool
    batch_size: int

    @classmethod
    def from_options(cls, values: Mapping[str, Any] | None = None) -> CrossTaskSettings:
        values = values or {}
        for name in wit_options.OPTION_BY_NAME:
            if name.startswith("wit_crosstask_"):
                wit_options.OPTION_BY_NAME[name].check(values.get(name))

        def get(name: str) -> Any:
            return wit_options.resolved(values, f"wit_crosstask_{name}")

        option = wit_options.OPTION_BY_NAME["wit_crosstask_conditions"]
        conditions = tuple(dict.fromkeys(wit_options.parse_choices(get("conditions"), option)))
        return cls(
            conditions=conditions,
            shots=get("shots"),
            select=get("select"),
            scoring=get("scoring"),
            limit=get("limit"),
            pseudo_rows=get("pseudo_rows"),
            seed=get("seed"),
            max_new_tokens=get("max_new_tokens"),
            chat=bool(get("chat")),
            batch_size=get("batch_size"),
        )


@dataclass
class Request:
    """One prompt to evaluate: a target item under a condition, with its demos."""

    item: TaskItem
    condition: str
    demos: tuple[Demo, ...]
    source: str | None = None  # the source task of single-source demos (cross, pseudo-labelling)
    prompt_ids: Tokens = ()
    option_ids: list[Tokens] | None = None
    option_logprobs: list[float] | None = None
    prediction: str = ""
    generated: str | None = None

    @property
    def correct(self) -> bool:
        if self.item.options is not None:
            return self.prediction == self.item.label
        return self.prediction == normalise(self.item.label)

    def trace(self) -> dict[str, Any]:
        return {
            "task": self.item.task,
            "id": self.item.id,
            "condition": self.condition,
            "prompt_ids": list(self.prompt_ids),
            "options": list(self.item.options) if self.item.options is not None else None,
            "option_ids": [list(ids) for ids in self.option_ids] if self.option_ids is not None else None,
            "option_logprobs": self.option_logprobs,
            "prediction": self.prediction,
            "label": self.item.label,
            "demos": [{"task": demo.item.task, "id": demo.item.id} for demo in self.demos],
            **({"generated": self.generated} if self.generated is not None else {}),
        }


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


class _Selector:
    """Similarities of targets (and pseudo rows) to pool rows under the chosen selection."""

    def __init__(
        self,
        settings: CrossTaskSettings,
        pool: list[TaskItem],
        queries: list[TaskItem],
        states: tuple[InputStates, InputStates] | None,
    ) -> None:
        self.pool = pool
        self.row_of = {item.where: index for index, item in enumerate(queries)}
        self.scores = selection_scores(
            settings.select,
            [q.input for q in queries],
            [p.input for p in pool],
            settings.seed,
            query_keys=[f"{q.task}|{q.id}|{q.input}" for q in queries],
            states=(states[1].layer(-1), states[0].layer(-1)) if states is not None else None,
        )
        self.task_mask = {task: np.array([p.task == task for p in pool]) for task in {p.task for p in pool}}
        self._others: dict[str, np.ndarray] = {}

    def not_itself(self, query: TaskItem) -> np.ndarray:
        """Pool rows that are not ``query`` itself (an item is never its own demo)."""
        if query.where not in self._others:
            self._others[query.where] = np.array([not p.same_item(query) for p in self.pool])
        return self._others[query.where]

    def best_rows(self, query: TaskItem, allowed: np.ndarray, k: int) -> list[int]:
        return top_k(self.scores[self.row_of[query.where]], allowed & self.not_itself(query), k)

    def best(self, query: TaskItem, allowed: np.ndarray, k: int) -> list[TaskItem]:
        return [self.pool[i] for i in self.best_rows(query, allowed, k)]

    def best_score(self, query: TaskItem, allowed: np.ndarray) -> float:
        picked = self.best_rows(query, allowed, 1)
        return float(self.scores[self.row_of[query.where], picked[0]]) if picked else -np.inf

    def from_task(self, task: str) -> np.ndarray:
        return self.task_mask.get(task, np.zeros(len(self.pool), dtype=bool))


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
    selector = _Selector(settings, pool, queries, states)
    runner = _Runner(model, tokenizer, settings, work)
    requests, pseudo_requests = [], []
    for task, items in by_task(chosen).items():
        sources = [s for s in pool_tasks if s != task]
        if {"gold", "pseudo"} & set(settings.conditions) and task not in pool_tasks:
            notes.append(f"{task}: no pool rows of this task, so no gold/pseudo in-task demos")
        for item in items:
            requests += _requests(item, settings, selector, sources)
        if task in pseudo_sets and "pseudo" in settings.conditions:
            for row in pseudo_sets[task]:
                for source in sources:
                    demos = selector.best(row, selector.from_task(source), 1)
                    pseudo_requests.append(Request(row, "label", _gold(demos), source=source))
    for condition in ("cross", "mixed", "random"):
        skipped = sorted({i.task for i in chosen} - {r.item.task for r in requests if r.condition == condition})
        if condition in settings.conditions and skipped:
            notes.append(f"{condition}: no pool rows of another task for {', '.join(skipped)}, so no {condition} demos")
    previous_items = [t for t in (previous or {}).get("items", []) if t.get("condition") in reuse]
    votes = {(r["task"], r["id"]): r["votes"] for r in (previous or {}).get("pseudo_labels", [])}
    per_condition = {c: [r for r in requests if r.condition == c] for c in settings.conditions}
    if "gold" in settings.conditions:
        per_condition["gold"] = _in_task(chosen, pool, pseudo_sets, selector, settings, "gold", {})
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
            pseudo_labels, labels = _pseudo_labels(pseudo_sets, pseudo_requests, selector)
            unlabelled = [t for t in pseudo_sets if not all(row.where in labels for row in pseudo_sets[t])]
            for task in unlabelled:
                notes.append(f"{task}: the pool has no other task to pseudo-label its rows with, so no pseudo demos")
            per_condition["pseudo"] = _in_task(chosen, pool, pseudo_sets, selector, settings, "pseudo", labels)
            total += len(per_condition["pseudo"])
        batch = [request for condition in stage for request in per_condition.get(condition, [])]
        run(stage, batch, lambda batch: _restore(batch, previous_items))
        evaluated += batch
        finished += stage
        if checkpoint is not None:
            results = _results(chosen, evaluated, settings)
            checkpoint(
                CrossTaskResult(
                    settings.scoring, results, list(evaluated), _gain_matrix(evaluated, results), [],
                    pseudo_labels, list(notes), settings, dict(work),
                ),
                list(finished),
            )  # fmt: skip
    results = _results(chosen, evaluated, settings)
    matrix = _gain_matrix(evaluated, results)
    activation = _activation(evaluated, matrix, states, pool, queries) if analyse else []
    return CrossTaskResult(
        settings.scoring, results, evaluated, matrix, activation, pseudo_labels, notes, settings, dict(work)
    )


def _in_task(
    chosen: list[TaskItem],
    pool: list[TaskItem],
    pseudo_sets: dict[str, list[TaskItem]],
    selector: _Selector,
    settings: CrossTaskSettings,
    condition: str,
    labels: dict[str, str],
) -> list[Request]:
    """``gold`` or ``pseudo`` requests: the K best of the task's sampled pool rows, with gold labels or with the
    pseudo-labels (tasks whose rows could not all be pseudo-labelled get none)."""
    requests = []
    for task, items in by_task(chosen).items():
        if task not in pseudo_sets:
            continue
        if condition == "pseudo" and not all(row.where in labels for row in pseudo_sets[task]):
            continue
        allowed = np.array([p in pseudo_sets[task] for p in pool])
        for item in items:
            rows = selector.best(item, allowed, settings.shots)
            demos = _gold(rows) if condition == "gold" else tuple(Demo(r, labels[r.where]) for r in rows)
            requests.append(Request(item, condition, demos))
    return requests


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


def _gold(items: Sequence[TaskItem]) -> tuple[Demo, ...]:
    return tuple(Demo(item, item.label) for item in items)


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


def _requests(item: TaskItem, settings: CrossTaskSettings, selector: _Selector, sources: list[str]) -> list[Request]:
    requests = []
    k = settings.shots
    others = ~selector.from_task(item.task)
    if "zero" in settings.conditions:
        requests.append(Request(item, "zero", ()))
    if "cross" in settings.conditions:
        for source in sources:
            demos = selector.best(item, selector.from_task(source), k)
            if demos:
                requests.append(Request(item, "cross", _gold(demos), source=source))
    if "mixed" in settings.conditions and sources:
        ranked = sorted(sources, key=lambda s: (-selector.best_score(item, selector.from_task(s)), s))
        demos = [d for s in ranked[:k] for d in selector.best(item, selector.from_task(s), 1)]
        requests.append(Request(item, "mixed", _gold(demos)))
    if "random" in settings.conditions and others.any():
        candidates = np.flatnonzero(others & selector.not_itself(item))
        rng = np.random.default_rng([settings.seed, stable_hash("random", item.task, item.id)])
        picked = rng.choice(candidates, size=min(k, len(candidates)), replace=False)
        requests.append(Request(item, "random", _gold([selector.pool[i] for i in picked])))
    return requests


def _pseudo_labels(
    pseudo_sets: dict[str, list[TaskItem]], requests: list[Request], selector: _Selector
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Majority vote over sources per pseudo row; ties go to the source whose demo is most similar."""
    votes: dict[str, list[Request]] = {}
    for request in requests:
        votes.setdefault(request.item.where, []).append(request)
    records, labels = [], {}
    for task, rows in pseudo_sets.items():
        for row in rows:
            ballots = votes.get(row.where, [])
            if not ballots:  # no other task to label it with: no pseudo-label
                continue
            count = Counter(b.prediction for b in ballots)
            top = max(count.values())
            tied = {label for label, n in count.items() if n == top}
            by_similarity = sorted(ballots, key=lambda b: -selector.best_score(row, selector.from_task(b.source or "")))
            label = next(b.prediction for b in by_similarity if b.prediction in tied)
            labels[row.where] = label
            gold = row.label if row.options is not None else normalise(row.label)
            records.append(
                {
                    "task": task,
                    "id": row.id,
                    "label": row.label,
                    "pseudo_label": label,
                    "correct": label == gold,
                    "votes": {b.source: b.prediction for b in ballots},
                }
            )
    return records, labels


class _Runner:
    """Runs requests through the engine, every unique prompt once. Prompts with options: on full-attention
    models every prompt and option goes into prefix trees (``score_tree``: a demo block several prompts start
    with runs once, and no KV cache is copied); on others prompts are prefilled in batches of similar length and
    their options scored on the cache. Prompts without options are prefilled likewise and decoded greedily (raw
    prompts stop at the end of the answer's line)."""

    def __init__(self, model: Any, tokenizer: Any, settings: CrossTaskSettings, work: Counter[str]) -> None:
        self.model, self.tokenizer, self.settings, self.work = model, tokenizer, settings, work
        self.special = SpecialIds.of(model, tokenizer)
        if not settings.chat:
            self.special = SpecialIds(self.special.eos | _line_ends(tokenizer), self.special.pad)
        self._option_ids: dict[str, Tokens] = {}

    def option_ids(self, option: str) -> Tokens:
        if option not in self._option_ids:
            text = continuation(option, self.settings.chat)
            self._option_ids[option] = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._option_ids[option]

    def run(self, requests: list[Request], advance: Callable[[int], None]) -> None:
        groups: dict[tuple[Tokens, bool], list[Request]] = {}
        for request in requests:
            text = prompt_text(request.item, request.demos)
            request.prompt_ids = tuple(render_prompt(self.tokenizer, as_prompt(text, self.settings.chat)))
            if request.item.options is not None:
                request.option_ids = [self.option_ids(option) for option in request.item.options]
            groups.setdefault((request.prompt_ids, request.option_ids is None), []).append(request)
        with eval_mode(self.model), torch.no_grad():
            scored = [ids for ids, generate in groups if not generate]
            if scored and tree_attention(self.model):
                self._score_tree(scored, {ids: groups[(ids, False)] for ids in scored}, advance)
            else:
                self._batched(scored, False, groups, advance)
            self._batched([ids for ids, generate in groups if generate], True, groups, advance)

    def _batched(
        self, prompts: list[Tokens], generate: bool, groups: dict[tuple[Tokens, bool], list[Request]], advance: Any
    ) -> None:
        """Prefill batches of similar length, then score options on the cache or decode from it."""
        prompts = sorted(prompts, key=len)
        begin = 0
        for end in partition([len(ids) + 1 for ids in prompts], self.settings.batch_size):
            batch, begin = prompts[begin:end], end
            members = [groups[(prompt, generate)] for prompt in batch]
            (self._generate if generate else self._score)(batch, members)
            advance(sum(len(m) for m in members))

    def _score_tree(self, prompts: list[Tokens], members: dict[Tokens, list[Request]], advance: Any) -> None:
        """Every option of every prompt in prefix trees, one forward per tree (see ``score_tree``)."""
        options = [list(dict.fromkeys(ids for r in members[p] for ids in r.option_ids)) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda index: prompts[index])
        done = 0

        def rows_done(count: int) -> None:
            nonlocal done
            advance(sum(len(members[prompts[i]]) for i in order[done : done + count]))
            done += count

        with timed(self.work, "score_s"):
            values = score_tree(self.model, prompts, options, work=self.work, progress=rows_done)
        for prompt, ids_list, sums in zip(prompts, options, values):
            by_ids = dict(zip(ids_list, sums))
            for request in members[prompt]:
                self._decide(request, [by_ids[ids] for ids in request.option_ids])

    def _decide(self, request: Request, logprobs: list[float]) -> None:
        request.option_logprobs = logprobs
        lengths = [len(ids) for ids in request.option_ids]
        request.prediction = request.item.options[
            int(np.argmax(option_scores(logprobs, lengths, self.settings.scoring)))
        ]

    def _score(self, batch: list[Tokens], members: list[list[Request]]) -> None:
        with timed(self.work, "prefill_s"):
            start = prefill(self.model, batch, self.special.pad)
        self.work["prompt_tokens"] += start.tokens_run
        pairs = list(
            dict.fromkeys((row, ids) for row, group in enumerate(members) for r in group for ids in r.option_ids)
        )
        with timed(self.work, "score_s"):
            sums = dict(zip(pairs, score(self.model, start, pairs, self.special.pad, self.settings.batch_size)))
        self.work["option_tokens"] += sum(len(ids) for _, ids in pairs)
        for row, group in enumerate(members):
            for request in group:
                self._decide(request, [sums[(row, ids)] for ids in request.option_ids])

    def _generate(self, batch: list[Tokens], members: list[list[Request]]) -> None:
        with timed(self.work, "prefill_s"):
            start = prefill(self.model, batch, self.special.pad)
        self.work["prompt_tokens"] += start.tokens_run
        with timed(self.work, "decode_s"):
            outputs = greedy(self.model, start, self.special, self.settings.max_new_tokens)
        for (tokens, _), group in zip(outputs, members):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for request in group:
                request.generated, request.prediction = text, normalise(text)


@lru_cache(maxsize=4)
def _line_ends(tokenizer: Any) -> frozenset[int]:
    """Ids of tokens holding a line break: a raw prompt's answer ends its line (read once per tokenizer)."""
    return frozenset(
        index for token, index in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([token])
    )


def _results(targets: list[TaskItem], requests: list[Request], settings: CrossTaskSettings) -> list[dict[str, Any]]:
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


def _gain_matrix(requests: list[Request], results: list[dict[str, Any]]) -> dict[str, Any]:
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


def _activation(
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
