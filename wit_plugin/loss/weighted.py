"""The weighted token loss from materialised logits (the ``eager`` implementation).

L = Σ_t w(role_t)·CE_t / N, where N counts the target tokens with w > 0 over the *whole* global batch
(every gradient-accumulation micro-batch, every data-parallel rank). Trainers pass that N as
``num_items_in_batch``; without it (evaluation) N is this batch's own count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wit_plugin.roles import Role

NUM_ROLE_CODES = len(Role)


@dataclass
class RoleStats:
    """Per-role sums of CE and token counts over scored (non-pad) targets; detached, fp32/int64."""

    loss_sum: torch.Tensor  # [NUM_ROLE_CODES]
    tokens: torch.Tensor  # [NUM_ROLE_CODES]


@dataclass
class WeightedLoss:
    loss: torch.Tensor
    stats: RoleStats


def shift_targets(input_ids: torch.Tensor, roles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1: targets and their roles, aligned with logits[:, :-1]."""
    return input_ids[:, 1:], roles[:, 1:].long()


def normaliser(weights: torch.Tensor, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
    """N: the trainer's global count if given, else this batch's count of weighted targets; never 0."""
    if num_items_in_batch is None:
        count = (weights > 0).sum()
    else:
        count = torch.as_tensor(num_items_in_batch, device=weights.device)
    return count.to(torch.float32).clamp(min=1.0)


def role_stats(token_loss: torch.Tensor, target_roles: torch.Tensor) -> RoleStats:
    """Sum of CE and number of tokens per role code, for logging."""
    token_loss = token_loss.detach().float()
    loss_sum = torch.zeros(NUM_ROLE_CODES, dtype=torch.float32, device=token_loss.device)
    loss_sum.index_add_(0, target_roles, token_loss)
    tokens = torch.bincount(target_roles, minlength=NUM_ROLE_CODES)
    return RoleStats(loss_sum, tokens)


def weighted_token_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    roles: torch.Tensor,
    weight_table: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> WeightedLoss:
    """Weighted CE over ``[B, T, V]`` logits; targets are ``input_ids`` shifted, roles say their weight.

    Tokens with role ``PAD`` (padding, packed-sequence starts) are never scored. CE runs in fp32.
    """
    targets, target_roles = shift_targets(input_ids, roles)
    scored = target_roles != Role.PAD
    scored_logits = logits[:, :-1][scored].float()
    scored_roles = target_roles[scored]
    token_loss = F.cross_entropy(scored_logits, targets[scored], reduction="none")
    token_weights = weight_table.to(token_loss.device)[scored_roles]
    loss = (token_weights * token_loss).sum() / normaliser(token_weights, num_items_in_batch)
    return WeightedLoss(loss, role_stats(token_loss, scored_roles))
