"""Demo selection: how similar each pool example is to each query, three ways.

* ``similar``: cosine of the evaluated model's own mean-pooled final hidden states over the *input* tokens only
  (no definition, no label), as the cross-task paper does with sentence embeddings: no extra model.
* ``lexical``: cosine of TF-IDF vectors of the inputs.
* ``random``: a seeded random score per (query, candidate), the same on every run.

Hidden states of every layer are kept (:class:`InputStates`): the last layer serves ``similar``, all of them the
activation analysis of the report. They are cached on disk per model and text set when the caller names the
model (``cache_key``), since a pool is embedded again on every run otherwise.
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

from wit_plugin.evaluation.engine import eval_mode, mean_hidden_states

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
    its text)."""
    if select == "similar":
        if states is None:
            raise ValueError("similar selection needs the inputs' hidden states")
        return cosine(*states)
    if select == "lexical":
        return tfidf_cosine(queries, candidates)
    if select == "random":
        return random_scores(list(query_keys or queries), len(candidates), seed)
    raise ValueError(f"unknown demo selection {select!r}; choose similar, lexical or random")
