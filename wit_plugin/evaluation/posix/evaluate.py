"""POSIX, the prompt sensitivity index (Chatterjee et al., 2024), for any Hugging Face causal LM.

For a set of N intent-aligned prompts x_i with greedy responses y_i,

    psi = 1 / (N (N - 1)) * sum_ij |log P(y_j | x_i) - log P(y_j | x_j)| / L_{y_j}

where L_{y_j} is the length of y_j in tokens (up to and including its EOS): the paper's Eq. 1, the default.
POSIX is the mean psi over sets: 0 when the model's responses are equally likely whichever variant of the
prompt it is given. ``psi_definition="package"`` computes psi as the authors' package prompt-sensitivity-index
0.0.1 does instead, to compare with numbers it made: |log P(y_i | x_j) - log P(y_j | x_j)| / max_new_tokens
(two responses under one prompt, over a constant length).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wit_plugin import options as wit_options
from wit_plugin.evaluation.engine import SpecialIds, Tokens, eval_mode, greedy, prefill, render_prompt, score, timed
from wit_plugin.evaluation.models import load_model
from wit_plugin.evaluation.posix.prompts import Prompt, validate_prompt_sets

Progress = Callable[[int, int], None]
SHORT_REPLY = 1  # tokens: a reply this short makes its part of psi one token's probability
# Each setting's option: its default, allowed values and error text.
OPTION_OF = {
    "max_new_tokens": "wit_posix_max_new_tokens",
    "batch_size": "wit_posix_batch_size",
    "psi_definition": "wit_posix_psi",
}


@dataclass(frozen=True)
class POSIXSettings:
    """How POSIX is computed; defaults and checks are the ``wit_posix_*`` options' (:mod:`wit_plugin.options`).
    The fields are :func:`evaluate_posix`'s keyword arguments (``evaluate_posix(..., **settings.arguments())``)."""

    max_new_tokens: int = wit_options.OPTION_BY_NAME[OPTION_OF["max_new_tokens"]].default
    batch_size: int = wit_options.OPTION_BY_NAME[OPTION_OF["batch_size"]].default
    psi_definition: str = wit_options.OPTION_BY_NAME[OPTION_OF["psi_definition"]].default

    def __post_init__(self) -> None:
        for name, option in OPTION_OF.items():
            wit_options.check(option, getattr(self, name))

    @classmethod
    def from_options(cls, values: Mapping[str, Any] | None = None) -> POSIXSettings:
        """The settings ``wit_posix_*`` option values ask for (unset: the option's default)."""
        return cls(**{name: wit_options.resolved(values or {}, option) for name, option in OPTION_OF.items()})

    def arguments(self) -> dict[str, Any]:
        return asdict(self)


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

    @property
    def short_replies(self) -> int:
        """Responses of at most :data:`SHORT_REPLY` tokens (EOS included): their column of ψ rests on the
        probability of one token."""
        return sum(len(response.token_ids) <= SHORT_REPLY for response in self.responses)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "responses": [{"text": r.text, "token_ids": list(r.token_ids)} for r in self.responses],
            "logprobs": self.logprobs.tolist(),
            "psi": self.psi,
            "short_replies": self.short_replies,
        }


@dataclass(frozen=True)
class POSIXResult:
    """POSIX, the per-set results, which definition of psi they use (``wit_posix_psi``), and where the
    time went: ``work`` holds seconds per phase (``prefill_s``, ``decode_s``, ``score_s``) and the tokens each
    ran (``prompt_tokens``, a shared prefix counted once; ``decode_steps``; ``scored_tokens``, response tokens
    run under another prompt's cache)."""

    posix: float
    sets: list[SetResult]
    max_new_tokens: int
    work: dict[str, float] = field(default_factory=dict)
    psi_definition: str = "paper"

    @property
    def psis(self) -> list[float]:
        return [result.psi for result in self.sets]

    @property
    def short_replies(self) -> int:
        return sum(result.short_replies for result in self.sets)

    @property
    def sets_with_short_replies(self) -> list[int]:
        return [index for index, result in enumerate(self.sets) if result.short_replies]

    def short_replies_note(self) -> str:
        """What a reader of ψ should know when some replies are at most one token long."""
        sets = self.sets_with_short_replies
        replies = sum(len(result.responses) for result in self.sets)
        named = ", ".join(map(str, sets[:20])) + (f", … ({len(sets) - 20} more in the trace)" if len(sets) > 20 else "")
        return (
            f"{self.short_replies} of {replies} replies are at most {SHORT_REPLY} token long (EOS included), in "
            f"{len(sets)} of {len(self.sets)} sets ({named}): their ψ rests on one token's "
            "probability; prompts that ask for an answer the model writes out, or a larger --max-new-tokens, help"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "posix": self.posix,
            "psi_definition": self.psi_definition,
            "max_new_tokens": self.max_new_tokens,
            "short_replies": self.short_replies,
            "sets_with_short_replies": self.sets_with_short_replies,
            "work": self.work,
            "sets": [result.to_dict() for result in self.sets],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> POSIXResult:
        """The result :meth:`to_dict` wrote (a saved trace, reused when the same command runs again)."""
        sets = [
            SetResult(
                item["prompts"],
                [Response(r["text"], tuple(r["token_ids"])) for r in item["responses"]],
                np.asarray(item["logprobs"], dtype=np.float64),
                item["psi"],
            )
            for item in data["sets"]
        ]
        return cls(
            data["posix"], sets, data["max_new_tokens"], dict(data.get("work", {})), data.get("psi_definition", "paper")
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def write_trace(self, path: str | PathLike[str]) -> Path:
        from wit_plugin.evaluation.resume import write_json

        return write_json(Path(path), self.to_dict(), indent=2)


def psi(
    logprobs: np.ndarray | Sequence[Sequence[float]],
    lengths: Sequence[int],
    definition: str = "paper",
    max_new_tokens: int | None = None,
) -> float:
    """The per-set sensitivity from the N x N matrix (row = prompt, column = response) and response lengths.

    ``paper`` (Eq. 1): |log P(y_j | x_i) - log P(y_j | x_j)| / L(y_j), one response under two prompts.
    ``package`` (prompt-sensitivity-index 0.0.1): |log P(y_i | x_j) - log P(y_j | x_j)| / ``max_new_tokens``,
    two responses under one prompt. Both sum over all i, j and divide by N (N - 1).
    """
    matrix = np.asarray(logprobs, dtype=np.float64)
    n = matrix.shape[0]
    if matrix.shape != (n, n) or n < 2 or len(lengths) != n:
        raise ValueError(f"psi needs an N x N matrix with N >= 2 and N lengths, got {matrix.shape} and {len(lengths)}")
    if min(lengths) < 1:
        raise ValueError("every response needs at least one token")
    if wit_options.check("wit_posix_psi", definition) == "paper":
        deviation = np.abs(matrix - np.diag(matrix)[None, :]) / np.asarray(lengths, dtype=np.float64)[None, :]
    else:
        if max_new_tokens is None or max_new_tokens < 1:
            raise ValueError(f"psi 'package' divides by max_new_tokens, which must be at least 1, got {max_new_tokens}")
        deviation = np.abs(matrix - np.diag(matrix)[:, None]) / max_new_tokens
    return float(deviation.sum() / (n * (n - 1)))


class POSIXEvaluator:
    """POSIX as a training-time evaluator (see :class:`~wit_plugin.evaluation.callback.EvaluationCallback`)."""

    name = "posix"

    def __init__(
        self, prompt_sets: str | PathLike[str] | Sequence[Sequence[Prompt]], settings: POSIXSettings | None = None
    ) -> None:
        from wit_plugin.evaluation.posix.variants import load_prompt_sets

        if isinstance(prompt_sets, (str, PathLike)):
            self.prompt_sets = load_prompt_sets(prompt_sets)
        else:
            self.prompt_sets = validate_prompt_sets(prompt_sets)
        self.settings = settings or POSIXSettings()
        self.last_result: POSIXResult | None = None

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, float]:
        self.last_result = evaluate_posix(model, self.prompt_sets, tokenizer, **self.settings.arguments())
        return {"posix": self.last_result.posix}


def evaluate_posix(
    model: Any,
    prompt_sets: Sequence[Sequence[Prompt]],
    tokenizer: Any = None,
    max_new_tokens: int = POSIXSettings.max_new_tokens,
    batch_size: int = POSIXSettings.batch_size,
    progress: Progress | None = None,
    psi_definition: str = POSIXSettings.psi_definition,
) -> POSIXResult:
    """POSIX of ``model`` (a loaded causal LM, or a path to load) on ``prompt_sets``.

    Whole sets are processed in groups of at most ``batch_size`` prompts, generated together (a set larger
    than that is a group of its own), and the (prompt, response) pairs of a group are scored ``batch_size``
    at a time. ``progress(done, total)`` counts finished sets. Identical prompts, and identical responses
    under one prompt, are computed once. ``psi_definition``: ``paper`` (Eq. 1) or ``package`` (see :func:`psi`).
    """
    POSIXSettings(max_new_tokens, batch_size, psi_definition)  # refused before any model work
    sets = validate_prompt_sets(prompt_sets)
    if isinstance(model, (str, PathLike)):
        model, loaded = load_model(model)
        tokenizer = tokenizer or loaded
    if tokenizer is None:
        raise ValueError("pass the tokenizer along with a loaded model")
    special = SpecialIds.of(model, tokenizer)
    rendered = [[tuple(render_prompt(tokenizer, prompt)) for prompt in prompts] for prompts in sets]
    results: list[SetResult] = []
    work: Counter[str] = Counter()
    with eval_mode(model), torch.no_grad():
        for indices in _groups([len(prompts) for prompts in rendered], batch_size):
            group = [rendered[k] for k in indices]
            outcomes = _evaluate_group(model, group, special, max_new_tokens, batch_size, work)
            for k, (matrix, outputs) in zip(indices, outcomes):
                responses = [Response(_decode(tokenizer, y), y) for y in outputs]
                value = psi(matrix, [len(y) for y in outputs], psi_definition, max_new_tokens)
                results.append(SetResult(sets[k], responses, matrix, value))
            if progress is not None:
                progress(len(results), len(sets))
    return POSIXResult(float(np.mean([r.psi for r in results])), results, max_new_tokens, dict(work), psi_definition)


def _decode(tokenizer: Any, tokens: Tokens) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _groups(sizes: list[int], limit: int) -> Iterator[list[int]]:
    """Indices of consecutive sets with at most ``limit`` prompts in all (a larger set is a group of its own)."""
    group: list[int] = []
    for index, size in enumerate(sizes):
        if group and sum(sizes[k] for k in group) + size > limit:
            yield group
            group = []
        group.append(index)
    if group:
        yield group


def _evaluate_group(
    model: Any,
    group: list[list[Tokens]],
    special: SpecialIds,
    max_new_tokens: int,
    batch_size: int,
    work: Counter[str],
) -> list[tuple[np.ndarray, list[Tokens]]]:
    """Log-prob matrices and responses of a group of sets: one prefill, greedy decoding (the diagonal), then
    the remaining pairs scored on the same prefill. Adds the phases' seconds and tokens to ``work``."""
    distinct = list(dict.fromkeys(x for members in group for x in members))
    row = {x: index for index, x in enumerate(distinct)}
    with timed(work, "prefill_s"):
        start = prefill(model, distinct, special.pad)
    with timed(work, "decode_s"):
        generated = greedy(model, start, special, max_new_tokens)
    response = {x: generated[row[x]][0] for x in distinct}
    logprobs = {(index, y): value for index, (y, value) in enumerate(generated)}
    needed = dict.fromkeys((row[x], response[other]) for members in group for x in members for other in members)
    pending = [pair for pair in needed if pair not in logprobs]
    with timed(work, "score_s"):
        logprobs.update(zip(pending, score(model, start, pending, special.pad, batch_size)))
    work["prompt_tokens"] += start.tokens_run
    work["decode_steps"] += max(len(y) for y, _ in generated) - 1
    work["scored_tokens"] += sum(len(y) for _, y in pending)
    results = []
    for members in group:
        outputs = [response[x] for x in members]
        matrix = np.array([[logprobs[(row[x], y)] for y in outputs] for x in members], dtype=np.float64)
        results.append((matrix, outputs))
    return results
