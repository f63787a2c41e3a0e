"""Demo selection: how similar each pool example is to each query, three ways.

* ``similar``: cosine of the evaluated model's own mean-pooled final hidden states over the *input* tokens only
  (no definition, no label), as the cross-task paper does with sentence embeddings: no extra model.
* ``lexical``: cosine of TF-IDF vectors of the inputs.
* ``random``: a seeded random score per (query, candidate), the same on every run.

Hidden states of every layer are kept (:class:`InputStates`): the last layer serves ``similar``, all of them the
activation analysis of the report. They are cached on disk per model and text set when the caller names the
model (``cache_key``), since a pool is embedded again on every run otherwise.

With the scores, :class:`Selector` picks each request's demos: per condition (:func:`condition_requests`), from
the target task's own rows (:func:`in_task_requests`), and the pseudo-labels those rows get by majority vote over
source tasks (:func:`vote_pseudo_labels`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wit_plugin.evaluation.crosstask.prompts import Demo, Request, normalise
from wit_plugin.evaluation.crosstask.settings import CrossTaskSettings
from wit_plugin.evaluation.crosstask.tasks import TaskItem, by_task
from wit_plugin.evaluation.engine import eval_mode, mean_hidden_states
from wit_plugin.options import OPTION_BY_NAME, OptionError

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class InputStates:
    """``[texts, layers, hidden]`` mean-pooled hidden states, row ``i`` for ``texts[i]``."""

    states: np.ndarray

    def layer(self, index: int = -1) -> np.ndarray:
        return self.states[:, index, :]


def stable_hash(*parts: Any) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def embed_inputs(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, cache_key: str | None = None
) -> InputStates:
    """Mean-pooled hidden states of every layer over each text's tokens (no special tokens added)."""
    import torch

    path = _cache_path(cache_key, texts) if cache_key else None
    if path is not None and path.is_file():
        return InputStates(np.load(path))
    rows = [
        tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) or (tokenizer.eos_token_id,) for text in texts
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with eval_mode(model), torch.no_grad():
        states = mean_hidden_states(model, rows, batch_size, pad=pad)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, states)
    return InputStates(states)


def _cache_path(cache_key: str, texts: Sequence[str]) -> Path:
    from wit_plugin.demo.model import cache_dir

    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:16]
    model = hashlib.sha256(cache_key.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "embeddings" / f"{model}-{digest}.npy"


def model_cache_key(path: str | Path) -> str | None:
    """What identifies a model folder's weights: its path and its weight files' sizes and modification times."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not files:
        return None
    return f"{folder.resolve()}|" + "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def cosine(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``[Q, C]`` cosine similarities of two sets of vectors."""

    def unit(vectors: np.ndarray) -> np.ndarray:
        vectors = vectors.astype(np.float64)
        norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    return unit(queries) @ unit(candidates).T


def tfidf_cosine(queries: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
    """``[Q, C]`` cosine of TF-IDF vectors (lower-cased word tokens, smoothed idf over both sets)."""
    documents = [Counter(_WORD.findall(text.lower())) for text in [*queries, *candidates]]
    vocabulary = {word: index for index, word in enumerate(sorted({w for d in documents for w in d}))}
    frequency = Counter(word for document in documents for word in document)
    idf = np.zeros(len(vocabulary))
    for word, index in vocabulary.items():
        idf[index] = math.log((1 + len(documents)) / (1 + frequency[word])) + 1.0
    matrix = np.zeros((len(documents), len(vocabulary)))
    for row, document in enumerate(documents):
        for word, count in document.items():
            matrix[row, vocabulary[word]] = count * idf[vocabulary[word]]
    return cosine(matrix[: len(queries)], matrix[len(queries) :])


def random_scores(query_keys: Sequence[str], candidate_count: int, seed: int) -> np.ndarray:
    """``[Q, C]`` scores in [0, 1), a fixed function of (seed, query, candidate position)."""
    return (
        np.stack([np.random.default_rng([seed, stable_hash(key)]).random(candidate_count) for key in query_keys])
        if query_keys
        else np.zeros((0, candidate_count))
    )


def top_k(scores: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores among ``allowed`` candidates (ties: the earlier candidate first)."""
    candidates = np.flatnonzero(allowed)
    if not len(candidates):
        return []
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]].tolist()


def selection_scores(
    select: str,
    queries: Sequence[str],
    candidates: Sequence[str],
    seed: int,
    query_keys: Sequence[str] | None = None,
    states: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``[Q, C]`` how much each candidate suits each query under ``select`` (higher first). ``similar`` needs the
    queries' and candidates' hidden states (``states``); ``random`` keys each query by ``query_keys`` (default:
    its text). A value that is not one of the ``wit_crosstask_select`` option's choices is an
    :class:`~wit_plugin.options.OptionError` naming them."""
    option = OPTION_BY_NAME["wit_crosstask_select"]
    option.check(select)
    if select == "similar":
        if states is None:
            raise ValueError("similar selection needs the inputs' hidden states")
        return cosine(*states)
    if select == "lexical":
        return tfidf_cosine(queries, candidates)
    if select == "random":
        return random_scores(list(query_keys or queries), len(candidates), seed)
    raise OptionError(f"{option.name} is not set; choose from {', '.join(option.choices)}")  # None passes check()


class Selector:
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


def gold_demos(items: Sequence[TaskItem]) -> tuple[Demo, ...]:
    return tuple(Demo(item, item.label) for item in items)


def condition_requests(
    item: TaskItem, settings: CrossTaskSettings, selector: Selector, sources: list[str]
) -> list[Request]:
    requests = []
    k = settings.shots
    others = ~selector.from_task(item.task)
    if "zero" in settings.conditions:
        requests.append(Request(item, "zero", ()))
    if "cross" in settings.conditions:
        for source in sources:
            demos = selector.best(item, selector.from_task(source), k)
            if demos:
                requests.append(Request(item, "cross", gold_demos(demos), source=source))
    if "mixed" in settings.conditions and sources:
        ranked = sorted(sources, key=lambda s: (-selector.best_score(item, selector.from_task(s)), s))
        demos = [d for s in ranked[:k] for d in selector.best(item, selector.from_task(s), 1)]
        requests.append(Request(item, "mixed", gold_demos(demos)))
    if "random" in settings.conditions and others.any():
        candidates = np.flatnonzero(others & selector.not_itself(item))
        rng = np.random.default_rng([settings.seed, stable_hash("random", item.task, item.id)])
        picked = rng.choice(candidates, size=min(k, len(candidates)), replace=False)
        requests.append(Request(item, "random", gold_demos([selector.pool[i] for i in picked])))
    return requests


def in_task_requests(
    chosen: list[TaskItem],
    pool: list[TaskItem],
    pseudo_sets: dict[str, list[TaskItem]],
    selector: Selector,
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
            demos = gold_demos(rows) if condition == "gold" else tuple(Demo(r, labels[r.where]) for r in rows)
            requests.append(Request(item, condition, demos))
    return requests


def vote_pseudo_labels(
    pseudo_sets: dict[str, list[TaskItem]], requests: list[Request], selector: Selector
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
