"""The weighted token loss from materialised logits (the ``eager`` implementation).

L = Σ_t w(role_t)·CE_t / N, where N counts the target tokens with w > 0 (``wit_normalize: tokens``) or sums their
weights (``weights``) over the *whole* global batch (every gradient-accumulation micro-batch, every data-parallel
rank). Trainers pass that N as ``num_items_in_batch`` (:func:`denominator` of each micro-batch, summed); without it
N is this batch's own count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wit_plugin.roles import IGNORE_INDEX, Role

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


@dataclass
class Targets:
    """What position t of the flattened ``[B·T]`` batch predicts: token t+1 and its role.

    Padding the shifted targets back to T (the last position predicts nothing) keeps logits and hidden
    states as free ``[B·T, ·]`` views instead of copies of ``[:, :-1]``.
    """

    tokens: torch.Tensor  # [B·T], IGNORE_INDEX where nothing is scored
    roles: torch.Tensor  # [B·T], Role.PAD where nothing is scored
    weights: torch.Tensor  # [B·T] float32, 0 where nothing is scored


def flat_targets(
    input_ids: torch.Tensor,
    roles: torch.Tensor,
    weight_table: torch.Tensor,
    message_weights: torch.Tensor | None = None,
) -> Targets:
    """``message_weights`` (``[B, T]``, per-token multipliers from the data) multiply the role weights."""
    target_roles = F.pad(roles[:, 1:].long(), (0, 1), value=int(Role.PAD)).reshape(-1)
    unscored = target_roles == Role.PAD
    tokens = F.pad(input_ids[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1).masked_fill(unscored, IGNORE_INDEX)
    weights = weight_table.to(input_ids.device)[target_roles].masked_fill(unscored, 0.0)
    if message_weights is not None:
        weights = weights * F.pad(message_weights[:, 1:].to(weights), (0, 1)).reshape(-1)
    return Targets(tokens, target_roles, weights)


def normaliser(weights: torch.Tensor, num_items_in_batch: torch.Tensor | float | None) -> torch.Tensor:
    """N: the trainer's global count (or weight sum) if given, else this batch's count of weighted targets; 1 where
    it is 0 (nothing is weighted then, so the loss is 0 either way). A sum of weights may be below 1."""
    if num_items_in_batch is None:
        count = (weights > 0).sum()
    else:
        count = torch.as_tensor(num_items_in_batch, device=weights.device)
    count = count.to(torch.float32)
    return torch.where(count > 0, count, torch.ones_like(count))


def denominator(
    input_ids: torch.Tensor,
    roles: torch.Tensor,
    weight_table: torch.Tensor,
    normalize: str,
    message_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One micro-batch's share of N, in float64: its targets with w > 0 (``tokens``) or their Σ w (``weights``),
    w being the role weight times the message weight of the target token (``[B, T]``, shifted like the roles)."""
    if normalize not in ("tokens", "weights"):
        raise ValueError(f"unknown wit_normalize {normalize!r}; choose tokens or weights")
    weights = flat_targets(input_ids, roles, weight_table.double(), message_weights).weights
    return (weights > 0).sum().double() if normalize == "tokens" else weights.sum()


def role_stats(token_loss: torch.Tensor, target_roles: torch.Tensor) -> RoleStats:
    """Sum of CE and number of tokens per role code, for logging."""
    token_loss = token_loss.detach().float()
    loss_sum = torch.zeros(NUM_ROLE_CODES, dtype=torch.float32, device=token_loss.device)
    loss_sum.index_add_(0, target_roles, token_loss)
    tokens = torch.bincount(target_roles, minlength=NUM_ROLE_CODES)
    return RoleStats(loss_sum, tokens)


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Half precision up to fp32 for the CE; fp32 and fp64 as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def weighted_token_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    roles: torch.Tensor,
    weight_table: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    message_weights: torch.Tensor | None = None,
    include_zero_weight: bool = True,
) -> WeightedLoss:
    """Weighted CE over ``[B, T, V]`` logits; targets are ``input_ids`` shifted, roles say their weight (times
    ``message_weights``, the multipliers from the data, when given).

    Tokens with role ``PAD`` (padding, packed-sequence starts) are never scored. CE runs in fp32. The per-role stats
    cover every scored token, or with ``include_zero_weight=False`` only the trained ones (final weight > 0, a
    message weight of 0 included): the tokens the fused implementations compute, so both report the same.
    """
    targets = flat_targets(input_ids, roles, weight_table, message_weights)
    token_loss = F.cross_entropy(
        at_least_fp32(logits.reshape(-1, logits.shape[-1])),
        targets.tokens,
        reduction="none",
        ignore_index=IGNORE_INDEX,
    )
    loss = (targets.weights * token_loss).sum() / normaliser(targets.weights, num_items_in_batch)
    reported = targets.roles != Role.PAD if include_zero_weight else targets.weights > 0
    return WeightedLoss(loss, role_stats(token_loss[reported], targets.roles[reported]))
