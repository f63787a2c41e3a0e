"""POSIX, the prompt sensitivity index (Chatterjee et al., 2024), for any Hugging Face causal LM.

For a set of N intent-aligned prompts x_i with greedy responses y_i,

    psi = 1 / (N (N - 1)) * sum_ij |log P(y_j | x_i) - log P(y_j | x_j)| / L_{y_j}

where L_{y_j} is the length of y_j in tokens (up to and including its EOS). POSIX is the mean psi over sets:
0 when the model's responses are equally likely whichever variant of the prompt it is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wit_plugin.evaluation.prompts import Prompt, render_prompt, validate_prompt_sets
from wit_plugin.evaluation.scoring import SpecialIds, count_chunks, generate_greedy, score_pairs

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Response:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class SetResult:
    """One prompt set: ``logprobs[i, j]`` is log P(response j | prompt i), summed over response j's tokens."""

    prompts: list[Prompt]
    responses: list[Response]
    logprobs: np.ndarray
    psi: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "responses": [{"text": r.text, "token_ids": list(r.token_ids)} for r in self.responses],
            "logprobs": self.logprobs.tolist(),
            "psi": self.psi,
        }


@dataclass(frozen=True)
class POSIXResult:
    posix: float
    sets: list[SetResult]
    max_new_tokens: int

    @property
    def psis(self) -> list[float]:
        return [result.psi for result in self.sets]

    def to_dict(self) -> dict[str, Any]:
        return {
            "posix": self.posix,
            "max_new_tokens": self.max_new_tokens,
            "sets": [result.to_dict() for result in self.sets],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def write_trace(self, path: str | PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path


def psi(logprobs: np.ndarray, lengths: Sequence[int]) -> float:
    """The per-set sensitivity from the N x N matrix (row = prompt, column = response) and response lengths."""
    matrix = np.asarray(logprobs, dtype=np.float64)
    n = matrix.shape[0]
    if matrix.shape != (n, n) or n < 2 or len(lengths) != n:
        raise ValueError(f"psi needs an N x N matrix with N >= 2 and N lengths, got {matrix.shape} and {len(lengths)}")
    if min(lengths) < 1:
        raise ValueError("every response needs at least one token")
    deviation = np.abs(matrix - np.diag(matrix)[None, :]) / np.asarray(lengths, dtype=np.float64)[None, :]
    return float(deviation.sum() / (n * (n - 1)))


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while evaluating, the caller's train/eval state restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def load_model(path: str | PathLike[str], device: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")), tokenizer


def evaluate_posix(
    model: Any,
    prompt_sets: Sequence[Sequence[Prompt]],
    tokenizer: Any = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> POSIXResult:
    """POSIX of ``model`` (a loaded causal LM, or a path to load) on ``prompt_sets``.

    ``batch_size`` bounds both the prompts generated together and the (prompt, response) pairs scored
    together. ``progress(done, total)`` is called after each batch. Identical prompts or responses are
    generated and scored once.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be at least 1")
    sets = validate_prompt_sets(prompt_sets)
    if isinstance(model, (str, PathLike)):
        model, tokenizer = load_model(model)
    if tokenizer is None:
        raise ValueError("pass the tokenizer along with a loaded model")
    special = SpecialIds.of(model, tokenizer)
    rendered = [[tuple(render_prompt(tokenizer, prompt)) for prompt in prompts] for prompts in sets]
    distinct = list(dict.fromkeys(ids for prompts in rendered for ids in prompts))
    # The scoring share of the total is an upper bound until identical responses are known.
    total = count_chunks(len(distinct), batch_size) + count_chunks(sum(len(p) ** 2 for p in rendered), batch_size)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with eval_mode(model), torch.no_grad():
        generated = dict(zip(distinct, generate_greedy(model, distinct, special, max_new_tokens, batch_size, step)))
        pairs = list({(x, generated[y]) for prompts in rendered for x in prompts for y in prompts})
        total = done + count_chunks(len(pairs), batch_size)
        scores = score_pairs(model, pairs, special.pad, batch_size, step)

    results = []
    for prompts, ids in zip(sets, rendered):
        outputs = [generated[x] for x in ids]
        matrix = np.array([[scores[(x, y)] for y in outputs] for x in ids], dtype=np.float64)
        responses = [Response(tokenizer.decode(y, skip_special_tokens=True, clean_up_tokenization_spaces=False), y) for y in outputs]
        results.append(SetResult(prompts, responses, matrix, psi(matrix, [len(y) for y in outputs])))
    return POSIXResult(float(np.mean([r.psi for r in results])), results, max_new_tokens)
