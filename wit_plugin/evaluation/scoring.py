"""Batched greedy generation and batched log P(response | prompt) for many (prompt, response) pairs.

Scoring shares each prompt's forward pass: the prompts of a chunk run once (left padded, KV cache kept),
the cache rows are gathered per pair, and the responses run on top (right padded, explicit positions).
A pair therefore costs its response tokens only, and pads never reach the sum: they are masked as keys
and their positions are dropped before summing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

Tokens = tuple[int, ...]
Step = Callable[[], None]


@dataclass(frozen=True)
class SpecialIds:
    """Token ids generation stops at (``eos``) and pads with (``pad``)."""

    eos: frozenset[int]
    pad: int

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> SpecialIds:
        """EOS ids from the tokenizer and the model's generation config (chat models often list several)."""
        ids: set[int] = set()
        config = getattr(model, "generation_config", None)
        for source in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
            if source is not None:
                ids.update([source] if isinstance(source, int) else source)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = min(ids) if ids else 0
        return cls(frozenset(ids), pad)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _left_pad(rows: Sequence[Tokens], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(row)
        mask[index, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _right_pad(rows: Sequence[Tokens], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(tokens: Sequence[int], eos: frozenset[int]) -> Tokens:
    """The response proper: up to and including the first EOS; what a batch appended after it is not the model's."""
    for index, token in enumerate(tokens):
        if token in eos:
            return tuple(tokens[: index + 1])
    return tuple(tokens)


@torch.no_grad()
def generate_greedy(
    model: Any,
    prompts: Sequence[Tokens],
    special: SpecialIds,
    max_new_tokens: int,
    batch_size: int,
    step: Step | None = None,
) -> list[Tokens]:
    """Greedy responses, batched with left padding (prompts sorted by length to waste little on pads)."""
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(special.eos) or None,
        pad_token_id=special.pad,
        use_cache=True,
    )
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    responses: list[Tokens] = [()] * len(prompts)
    for indices in _chunks(order, batch_size):
        ids, mask = _left_pad([prompts[index] for index in indices], special.pad, model.device)
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for index, row in zip(indices, output[:, ids.shape[1] :].tolist()):
            responses[index] = cut_at_eos(row, special.eos)
        if step is not None:
            step()
    return responses


def _response_logprobs(
    first_logits: torch.Tensor, rest_logits: torch.Tensor | None, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Sum over real tokens of log_softmax(logits)[target], in float32 at least, pads contributing nothing."""
    logits = first_logits[:, None, :] if rest_logits is None else torch.cat([first_logits[:, None, :], rest_logits], 1)
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (picked * mask).sum(-1, dtype=torch.float64)


@torch.no_grad()
def _score_chunk(model: Any, pairs: Sequence[tuple[Tokens, Tokens]], pad: int) -> list[float]:
    prompts = list(dict.fromkeys(prompt for prompt, _ in pairs))
    row_of = {prompt: row for row, prompt in enumerate(prompts)}
    rows = torch.tensor([row_of[prompt] for prompt, _ in pairs], device=model.device)

    prompt_ids, prompt_mask = _left_pad(prompts, pad, model.device)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    first_logits = out.logits[:, -1, :].index_select(0, rows)

    targets, target_mask = _right_pad([response for _, response in pairs], pad, model.device)
    rest_logits = None
    if targets.shape[1] > 1:
        cache = out.past_key_values
        cache.reorder_cache(rows)
        inputs, input_mask = targets[:, :-1], target_mask[:, :-1]
        starts = prompt_mask.sum(-1).index_select(0, rows)
        rest_logits = model(
            input_ids=inputs,
            attention_mask=torch.cat([prompt_mask.index_select(0, rows), input_mask], dim=1),
            position_ids=starts[:, None] + torch.arange(inputs.shape[1], device=model.device),
            past_key_values=cache,
            use_cache=True,
        ).logits
    return _response_logprobs(first_logits, rest_logits, targets, target_mask).tolist()


def score_pairs(
    model: Any,
    pairs: Sequence[tuple[Tokens, Tokens]],
    pad: int,
    batch_size: int,
    step: Step | None = None,
) -> dict[tuple[Tokens, Tokens], float]:
    """log P(response | prompt) summed over the response tokens, for each distinct pair.

    Pairs are ordered by prompt, then by response length, so a chunk holds few prompts and little padding.
    """
    unique = sorted(set(pairs), key=lambda pair: (len(pair[0]), pair[0], len(pair[1]), pair[1]))
    scores: dict[tuple[Tokens, Tokens], float] = {}
    for chunk in _chunks(unique, batch_size):
        scores.update(zip(chunk, _score_chunk(model, chunk, pad)))
        if step is not None:
            step()
    return scores


def count_chunks(items: int, batch_size: int) -> int:
    return -(-items // batch_size)
