"""Per-role loss and token counts, accumulated between two logging steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from wit_plugin.loss.weighted import NUM_ROLE_CODES, RoleStats
from wit_plugin.roles import TRAINABLE_ROLES, Role

Reducer = Callable[[torch.Tensor], torch.Tensor]


class RoleMetrics:
    """Sums CE and counts per role over micro-batches; ``summary`` gives ``wit/loss_<role>`` (mean CE) and
    ``wit/tokens_<role>`` for the window since the last summary, for ``roles`` (by default every role:
    seeing the instruction loss move under standard tuning is half the point).
    """

    def __init__(self, roles: Sequence[Role] = TRAINABLE_ROLES) -> None:
        self.roles = tuple(roles)
        self._totals = torch.zeros(2, NUM_ROLE_CODES, dtype=torch.float64)

    def add(self, stats: RoleStats) -> None:
        self._totals[0] += stats.loss_sum.detach().double().cpu()
        self._totals[1] += stats.tokens.detach().double().cpu()

    def summary(self, reduce: Reducer | None = None, prefix: str = "") -> dict[str, float]:
        """Mean CE and token count per role, summed over ranks by ``reduce`` when given; then reset."""
        totals = reduce(self._totals) if reduce is not None else self._totals
        self._totals = torch.zeros_like(self._totals)
        logs: dict[str, float] = {}
        for role in self.roles:
            loss_sum, tokens = totals[0, role].item(), totals[1, role].item()
            if tokens:
                logs[f"{prefix}wit/loss_{role.label}"] = loss_sum / tokens
            logs[f"{prefix}wit/tokens_{role.label}"] = int(tokens)
        return logs
