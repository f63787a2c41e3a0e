"""Running cross-task requests through the evaluation engine: option scoring or greedy generation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from wit_plugin.evaluation.crosstask.prompts import Request, as_prompt, continuation, normalise, prompt_text
from wit_plugin.evaluation.crosstask.settings import CrossTaskSettings
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


class Runner:
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
