"""The evaluation engine shared by every evaluator (POSIX, cross-task): prompts to token ids, one prefill per
group of prompts, greedy decoding from it, scoring of continuations (responses, answer options) on top of the
same prefill or, for full-attention models, in prefix trees (:func:`score_tree`), and mean-pooled hidden states.

Every prompt runs through the model once (KV cache kept). A prefix that many prompts share (a chat
template's system turn, say) runs once and its cache is repeated, so the padded batch holds only what
differs. Greedy decoding continues from a copy of that cache, dropping rows as they reach EOS, and records
log P(y_i | x_i) as it goes; scoring a response y under another prompt x gathers x's cache row and runs y's
tokens only (right padded, explicit positions). Pads are masked as keys and dropped before summing, so
they are never scored.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wit_plugin import options as wit_options
from wit_plugin.compat import cache_kwargs, logits_to_keep, output_cache

Tokens = tuple[int, ...]
Prompt = str | list[dict[str, str]]  # raw text, or chat messages rendered with the generation prompt


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while evaluating, then every module's own train/eval state back as it was (a frozen
    submodule kept in eval mode stays so; ``model.train()`` would switch it on)."""
    states = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in states:
            module.training = training


@contextmanager
def timed(work: Counter[str], key: str) -> Iterator[None]:
    """Adds the block's wall time to ``work[key]``."""
    clock = time.perf_counter()
    try:
        yield
    finally:
        work[key] += time.perf_counter() - clock


def render_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids the model is conditioned on: a raw string as the tokenizer encodes it (special tokens such
    as BOS included), a message list through the chat template with the assistant turn opened."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat message prompts need a tokenizer with a chat template, and this one has none; "
            "pass raw string prompts instead"
        )
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


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


@dataclass
class Prefill:
    """A group of prompts after one forward pass: their KV cache and next-token logits, reused by every
    response scored under them."""

    cache: Any
    mask: torch.Tensor  # [prompts, width], left padded
    lengths: torch.Tensor  # [prompts]
    last_logits: torch.Tensor  # [prompts, vocab]
    tokens_run: int  # prompt tokens that went through the model (a shared prefix once), pads not counted

    def rows(self, rows: torch.Tensor) -> Any:
        """A copy of the cache holding ``rows`` (repeats allowed), leaving this one intact for later use."""
        cache = detached_copy(self.cache)
        cache.reorder_cache(rows)
        return cache


def plain_attention(cache: Any) -> bool:
    """Whether every layer of ``cache`` holds full-attention keys and values only (``DynamicLayer`` itself).

    Such a layer replaces its tensors on update and reorder instead of writing into them, and its keys can be
    masked out column by column. Sliding-window layers count cache slots rather than positions, and
    recurrent (conv, SSM, linear-attention) layers keep state that no mask reaches, so neither holds.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def detached_copy(cache: Any) -> Any:
    """A cache that can be reordered and extended without touching ``cache``: copies of the layer objects
    for plain attention caches (see :func:`plain_attention`), a deep copy of everything otherwise."""
    if not plain_attention(cache):
        return copy.deepcopy(cache)
    shallow = copy.copy(cache)
    shallow.layers = [copy.copy(layer) for layer in cache.layers]
    return shallow


def attention_kind(model: Any) -> bool | None:
    """Whether the cache ``model`` builds is plain attention (see :func:`plain_attention`), decided from its
    config before any prefix runs; ``None`` when the config cannot tell."""
    from transformers import DynamicCache

    try:
        return plain_attention(DynamicCache(config=model.config))
    except (AttributeError, TypeError, ValueError):
        return None


def _pad(rows: Sequence[Tokens], pad: int, device: torch.device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, span] = torch.tensor(row, dtype=torch.long)
        mask[index, span] = 1
    return ids.to(device), mask.to(device)


def _log_softmax_at(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[target] in at least float32, without materialising the full log-softmax."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def cut_at_eos(tokens: Sequence[int], eos: frozenset[int]) -> Tokens:
    """The response proper: up to and including the first EOS."""
    for index, token in enumerate(tokens):
        if token in eos:
            return tuple(tokens[: index + 1])
    return tuple(tokens)


def shared_prefix(prompts: Sequence[Tokens]) -> Tokens:
    """The prefix worth running once for all ``prompts`` (empty if none): the one that minimises the tokens
    computed, ``prefix + rows x widest remainder``, where prompts without the prefix stay whole.

    Each prompt keeps at least one token after the prefix, since its next-token logits come from there. A
    prefix of one prompt alone can pay too: it takes a long prompt's bulk out of the padded batch. Prompts
    sharing a prefix of length k are found by splitting those sharing k - 1 on their k-th token, so
    the search is linear in the total prompt length.
    """
    lengths = [len(prompt) for prompt in prompts]
    longest_first = sorted(range(len(prompts)), key=lengths.__getitem__, reverse=True)
    best_cost, best = len(prompts) * max(lengths), ()
    classes = [list(range(len(prompts)))]
    for length in range(1, max(lengths)):
        split: list[list[int]] = []
        for members in classes:
            by_token: dict[int, list[int]] = {}
            for index in members:
                if lengths[index] > length:
                    by_token.setdefault(prompts[index][length - 1], []).append(index)
            split.extend(by_token.values())
        classes = split
        for members in classes:
            inside = set(members)
            outside = next((lengths[index] for index in longest_first if index not in inside), 0)
            width = max(max(lengths[index] for index in members) - length, outside)
            if length + len(prompts) * width < best_cost:
                best_cost, best = length + len(prompts) * width, prompts[members[0]][:length]
    return best


@torch.no_grad()
def prefill(model: Any, prompts: Sequence[Tokens], pad: int) -> Prefill:
    """One left-padded forward over ``prompts`` after their shared prefix (run once); positions count real
    tokens only, so neither the padding nor the split changes a value.

    The pads sit between the prefix and the rest of each row, which only a plain attention cache tolerates
    (see :func:`plain_attention`); other models run every prompt whole.
    """
    device = model.device
    keep = logits_to_keep(model)
    # a config that cannot tell leaves the check to the real cache below
    prefix, cache = shared_prefix(prompts) if attention_kind(model) is not False else (), None
    if prefix:
        cache = output_cache(model(input_ids=torch.tensor([prefix], device=device), use_cache=True, **keep))
        if not plain_attention(cache):
            prefix, cache = (), None
    length = len(prefix)
    members = [bool(length) and len(prompt) > length and prompt[:length] == prefix for prompt in prompts]
    ids, mask = _pad(
        [prompt[length:] if inside else prompt for prompt, inside in zip(prompts, members)], pad, device, left=True
    )
    offsets = torch.tensor(members, device=device, dtype=torch.long) * length
    positions = (offsets[:, None] + mask.cumsum(-1) - 1).clamp(min=0)
    if length:
        cache.reorder_cache(torch.zeros(len(prompts), dtype=torch.long, device=device))
        mask = torch.cat([(offsets[:, None] > 0).long().expand(-1, length), mask], dim=1)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache_kwargs(model, cache), **keep
    )
    tokens_run = length + int(mask[:, length:].sum())
    return Prefill(output_cache(out), mask, mask.sum(-1), out.logits[:, -1, :], tokens_run)


@torch.no_grad()
def greedy(model: Any, start: Prefill, special: SpecialIds, max_new_tokens: int) -> list[tuple[Tokens, float]]:
    """Greedy responses for every prompt of ``start`` with log P(response | prompt): the matrix diagonal."""
    count = start.mask.shape[0]
    device = start.mask.device
    eos = torch.tensor(sorted(special.eos), dtype=torch.long, device=device)
    tokens = torch.full((count, max_new_tokens), special.pad, dtype=torch.long, device=device)
    logprob = torch.zeros(count, dtype=torch.float64, device=device)
    active = torch.arange(count, device=device)
    cache, mask, positions, logits = detached_copy(start.cache), start.mask, start.lengths, start.last_logits
    for step in range(max_new_tokens):
        chosen = logits.argmax(-1)
        tokens[active, step] = chosen
        logprob[active] += _log_softmax_at(logits, chosen).double()
        running = ~torch.isin(chosen, eos)
        if step + 1 == max_new_tokens or not running.any():
            break
        if not running.all():
            keep = running.nonzero().squeeze(-1)
            cache.reorder_cache(keep)  # every cache layer kind implements it, recurrent state included
            active, chosen, mask, positions = active[keep], chosen[keep], mask[keep], positions[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(
            input_ids=chosen[:, None],
            attention_mask=mask,
            position_ids=positions[:, None] + step,
            **cache_kwargs(model, cache),
            use_cache=True,
        ).logits[:, -1, :]
    responses = [cut_at_eos(row, special.eos) for row in tokens.tolist()]
    return list(zip(responses, logprob.tolist()))


def partition(lengths: Sequence[int], max_rows: int, overhead: int = 32) -> list[int]:
    """Chunk boundaries for ascending ``lengths`` that minimise padded tokens plus ``overhead`` per forward.

    A chunk of responses runs ``rows x (longest - 1)`` input tokens (the first token's logits come from
    the prefill), so one long response among short ones is expensive; a dynamic programme over the sorted
    lengths finds the cheapest split with at most ``max_rows`` per chunk. Returns the chunk end indices.
    """
    best = [0] + [0] * len(lengths)
    end_of = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        options = []
        for begin in range(max(0, end - max_rows), end):
            tokens = (end - begin) * (lengths[end - 1] - 1)
            options.append((best[begin] + tokens + (overhead if tokens else 0), begin))
        best[end], end_of[end] = min(options)
    ends, end = [], len(lengths)
    while end:
        ends.append(end)
        end = end_of[end]
    return ends[::-1]


@torch.no_grad()
def score(model: Any, start: Prefill, pairs: Sequence[tuple[int, Tokens]], pad: int, batch_size: int) -> list[float]:
    """log P(response | prompt) summed over the response tokens, for (prompt row of ``start``, response) pairs.

    The prompts are not re-run: each chunk gathers its rows of the prefill cache and runs responses only.
    """
    scores = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda index: len(pairs[index][1]))
    begin = 0
    for end in partition([len(pairs[index][1]) for index in order], batch_size):
        chunk, begin = order[begin:end], end
        rows = torch.tensor([pairs[index][0] for index in chunk], device=start.mask.device)
        targets, target_mask = _pad([pairs[index][1] for index in chunk], pad, start.mask.device, left=False)
        logits = start.last_logits.index_select(0, rows)[:, None, :]
        if targets.shape[1] > 1:
            inputs = targets[:, :-1]
            positions = start.lengths.index_select(0, rows)[:, None] + torch.arange(inputs.shape[1], device=rows.device)
            rest = model(
                input_ids=inputs,
                attention_mask=torch.cat([start.mask.index_select(0, rows), target_mask[:, :-1]], dim=1),
                position_ids=positions,
                **cache_kwargs(model, start.rows(rows)),
                use_cache=True,
            ).logits
            logits = torch.cat([logits, rest], dim=1)
        sums = (_log_softmax_at(logits, targets) * target_mask).sum(-1, dtype=torch.float64)
        for index, value in zip(chunk, sums.tolist()):
            scores[index] = value
    return scores


@torch.no_grad()
def mean_hidden_states(
    model: Any, rows: Sequence[Tokens], batch_size: int, layers: Sequence[int] | None = None, pad: int = 0
) -> np.ndarray:
    """``[rows, layers, hidden]`` float32: each row's hidden states averaged over its tokens, at each of
    ``layers`` (indices into the model's ``hidden_states``: 0 is the embeddings, -1 the final layer; default
    all). Rows run right padded, ``batch_size`` at a time; pads are masked and never averaged."""
    device = model.device
    out: list[np.ndarray] = []
    order = sorted(range(len(rows)), key=lambda index: len(rows[index]))
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        ids, mask = _pad([rows[index] for index in chunk], pad, device, left=False)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        picked = hidden if layers is None else [hidden[layer] for layer in layers]
        weights = (mask / mask.sum(-1, keepdim=True)).unsqueeze(-1).to(picked[0].dtype)
        pooled = torch.stack([(states * weights).sum(1) for states in picked], dim=1)
        out.append(pooled.float().cpu().numpy())
    result = np.concatenate(out) if out else np.zeros((0, 0, 0), dtype=np.float32)
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return result[inverse] if len(order) else result


def option_scores(logprob_sums: Sequence[float], lengths: Sequence[int], scoring: str) -> list[float]:
    """Scores of answer options: summed log-probability (``sum``) or per token (``mean``)."""
    if wit_options.check("wit_crosstask_scoring", scoring) == "sum":
        return list(logprob_sums)
    assert scoring == "mean", f"wit_crosstask_scoring {scoring!r} is allowed but not scored here"
    return [value / max(length, 1) for value, length in zip(logprob_sums, lengths)]


MASKED_ATTENTION = frozenset({"eager", "sdpa", "flex_attention"})  # implementations that apply a 4D mask as given


def tree_attention(model: Any) -> bool:
    """Whether :func:`score_tree` may run on ``model``: every layer full attention over positions (sliding-window
    and recurrent layers read no such mask), decided from its config, under an attention implementation that
    applies an arbitrary 4D mask (flash attention reads a mask as padding only)."""
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    return attention_kind(model) is True and implementation in MASKED_ATTENTION


@dataclass
class _Tree:
    """Token sequences merged into a prefix tree, laid out as one row: token, parent (-1: root), depth."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    children: list[dict[int, int]] = field(default_factory=list)
    roots: dict[int, int] = field(default_factory=dict)

    def add(self, parent: int, token: int) -> int:
        """The node for ``token`` under ``parent``, created if new."""
        siblings = self.children[parent] if parent >= 0 else self.roots
        if token not in siblings:
            siblings[token] = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
            self.depths.append(self.depths[parent] + 1 if parent >= 0 else 0)
            self.children.append({})
        return siblings[token]

    def path(self, tokens: Sequence[int], parent: int = -1) -> int:
        for token in tokens:
            parent = self.add(parent, token)
        return parent


@torch.no_grad()
def score_tree(
    model: Any,
    prompts: Sequence[Tokens],
    continuations: Sequence[Sequence[Tokens]],
    row_tokens: int = 512,
    work: Counter[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """``[i][j]`` = Σ log P(continuations[i][j] | prompts[i]), every prompt run once and every shared prefix
    (a demo block several prompts start with, an option's first words) run once.

    Prompts, in lexicographic order, and their continuations are merged into prefix trees of about
    ``row_tokens`` tokens; each tree is one row whose attention mask lets a token see exactly its ancestors, with
    its depth as position, so each token's state is what it would be in its own sequence. The nodes whose logits
    are needed (a prompt's last token, a continuation's tokens but the last) go at the end of the row, so the LM
    head runs on them alone. Only where :func:`tree_attention` holds. ``work`` gets
    the tokens run (``tree_tokens``); ``progress`` the number of prompts finished with each row.
    """
    if any(not prompt for prompt in prompts) or any(not option for options in continuations for option in options):
        raise ValueError("score_tree needs non-empty prompts and continuations")
    device = model.device
    keep = "logits_to_keep" in logits_to_keep(model)
    order = sorted(range(len(prompts)), key=lambda index: prompts[index])
    results: list[list[float]] = [[0.0] * len(options) for options in continuations]
    begin = 0
    while begin < len(order):
        tree, targets, end = _Tree(), [], begin  # targets: (prompt, option, position, node predicting it, token)
        while end < len(order) and (end == begin or len(tree.tokens) < row_tokens):
            index = order[end]
            last = tree.path(prompts[index])
            for option_index, option in enumerate(continuations[index]):
                parent = last
                for position, token in enumerate(option):
                    targets.append((index, option_index, parent, token))
                    if position + 1 < len(option):
                        parent = tree.add(parent, token)
            end += 1
        start, begin = begin, end
        if not targets:  # prompts without continuations: nothing to score
            if progress is not None:
                progress(end - start)
            continue
        needed = sorted({parent for _, _, parent, _ in targets})
        needed_set = set(needed)
        rest = [node for node in range(len(tree.tokens)) if node not in needed_set]
        layout = rest + needed  # needed nodes last: the LM head runs on the row's tail only
        slot = {node: position for position, node in enumerate(layout)}
        size = len(layout)
        ancestors = np.zeros((size, size), dtype=bool)
        for node in range(len(tree.tokens)):  # parents are created before children
            row = slot[node]
            parent = tree.parents[node]
            if parent >= 0:
                ancestors[row] = ancestors[slot[parent]]
            ancestors[row, row] = True
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.full((1, 1, size, size), torch.finfo(dtype).min, dtype=dtype)
        mask[0, 0][torch.from_numpy(ancestors)] = 0.0
        ids = torch.tensor([[tree.tokens[node] for node in layout]], device=device)
        positions = torch.tensor([[tree.depths[node] for node in layout]], device=device)
        extra = {"logits_to_keep": len(needed)} if keep else {}
        logits = model(
            input_ids=ids, attention_mask=mask.to(device), position_ids=positions, use_cache=False, **extra
        ).logits[0, -len(needed) :]
        row_of = {node: position for position, node in enumerate(needed)}
        rows = torch.tensor([row_of[parent] for _, _, parent, _ in targets], dtype=torch.long, device=device)
        tokens = torch.tensor([token for _, _, _, token in targets], dtype=torch.long, device=device)
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        log_norm = torch.logsumexp(logits, dim=-1)  # once per needed node, then gathered per target
        values = (logits[rows, tokens] - log_norm[rows]).double().tolist()
        for (index, option_index, _, _), value in zip(targets, values):
            results[index][option_index] += value
        if work is not None:
            work["tree_tokens"] += size
        if progress is not None:
            progress(end - start)
    return results
