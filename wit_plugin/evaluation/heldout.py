"""Held-out cross-entropy per role: how well a model predicts each kind of token of rows it was not trained on.

Rows are tagged by a :class:`~wit_plugin.tagging.RoleTagger` (a run's own tagging set-up), run through the
model in batches of about ``batch_tokens`` tokens (their ``[tokens x vocab]`` logits are the memory to mind),
and each target token's CE (fp32) is summed per role; a row's first token is never a target, as in training.
Rows longer than ``max_length`` are cut there (the caller picks it by one rule for every model: see
:func:`wit_plugin.evaluation.compare.cut_length`); ``rows_truncated`` counts them. ``loss_<role>`` is the mean
CE over that role's target tokens. No WIT loss is reported: under each model's own weights it averages
different tokens with different weights, so it cannot rank models (see :mod:`wit_plugin.evaluation.compare`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wit_plugin.evaluation.engine import eval_mode
from wit_plugin.loss.weighted import NUM_ROLE_CODES, weighted_token_loss
from wit_plugin.roles import TRAINABLE_ROLES, Role, RoleWeights
from wit_plugin.tagging import TaggedSequence


@dataclass(frozen=True)
class HeldOut:
    loss_sum: list[float]  # per role code
    tokens: list[int]  # per role code
    rows: int
    truncated: int

    def metrics(self) -> dict[str, float]:
        logs: dict[str, float] = {"rows": self.rows, "rows_truncated": self.truncated}
        for role in TRAINABLE_ROLES:
            logs[f"tokens_{role.label}"] = self.tokens[role]
            if self.tokens[role]:
                logs[f"loss_{role.label}"] = self.loss_sum[role] / self.tokens[role]
        return logs


@torch.no_grad()
def heldout_losses(
    model: Any,
    rows: Sequence[TaggedSequence],
    max_length: int | None = None,
    batch_tokens: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> HeldOut:
    """Per-role CE sums and counts over ``rows`` (cut at ``max_length``)."""
    cut = [row.truncated(max_length) if max_length and len(row.input_ids) > max_length else row for row in rows]
    truncated = sum(len(a.input_ids) != len(b.input_ids) for a, b in zip(rows, cut))
    order = sorted(range(len(cut)), key=lambda index: len(cut[index].input_ids))
    loss_sum = torch.zeros(NUM_ROLE_CODES, dtype=torch.float64)
    tokens = torch.zeros(NUM_ROLE_CODES, dtype=torch.int64)
    ones = RoleWeights.groups(1.0, 1.0).table()
    device = model.device
    done, begin = 0, 0
    with eval_mode(model):
        while begin < len(order):
            end = begin + 1
            while end < len(order) and (end - begin + 1) * len(cut[order[end]].input_ids) <= batch_tokens:
                end += 1
            batch = [cut[index] for index in order[begin:end]]
            width = max(len(row.input_ids) for row in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            roles = torch.full((len(batch), width), int(Role.PAD), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for k, row in enumerate(batch):
                n = len(row.input_ids)
                ids[k, :n] = torch.tensor(row.input_ids)
                roles[k, :n] = torch.tensor(row.roles)  # a row's first token predicts nothing: never a target
                mask[k, :n] = 1
            ids = ids.to(device)
            logits = model(input_ids=ids, attention_mask=mask.to(device), use_cache=False).logits
            stats = weighted_token_loss(logits, ids, roles.to(device), ones.to(device)).stats
            loss_sum += stats.loss_sum.double().cpu()
            tokens += stats.tokens.cpu()
            done += len(batch)
            begin = end
            if progress is not None:
                progress(done, len(order))
    return HeldOut(loss_sum.tolist(), tokens.tolist(), len(rows), truncated)
