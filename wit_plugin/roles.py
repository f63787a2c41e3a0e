"""Token roles and the weights the loss gives them.

Datasets store a role *code* per token, never a weight, so the weights can change between runs without
re-tokenising. Every preset of the paper family (standard instruction tuning, instruction modelling,
weighted instruction tuning, continued pre-training) is a :class:`RoleWeights`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import Any

import torch


class Role(IntEnum):
    """What a token is, from the point of view of the loss.

    The order is the order of :class:`RoleWeights` fields; ``PAD`` marks padding and packed-sequence starts,
    tokens that are never a target whatever the weights say.
    """

    TEMPLATE = 0  # chat scaffolding the template injects: role headers, default system prompts, BOS
    SYSTEM = 1  # system message content
    INSTRUCTION = 2  # user (and tool) message content
    RESPONSE = 3  # assistant message content
    EOT = 4  # the end-of-turn / EOS token that closes an assistant turn
    PAD = 5  # padding, or the first token of a packed sequence: never a target

    @property
    def label(self) -> str:
        return self.name.lower()


TRAINABLE_ROLES: tuple[Role, ...] = tuple(role for role in Role if role is not Role.PAD)
ROLE_DTYPE = torch.int8

# Message "role" strings as they appear in chat datasets, mapped to token roles.
MESSAGE_ROLES: dict[str, Role] = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.INSTRUCTION,
    "human": Role.INSTRUCTION,
    "tool": Role.INSTRUCTION,
    "ipython": Role.INSTRUCTION,
    "function": Role.INSTRUCTION,
    "assistant": Role.RESPONSE,
    "gpt": Role.RESPONSE,
    "model": Role.RESPONSE,
}


class WeightError(ValueError):
    """Raised for weights that would make training silently wrong."""


def _check_weight(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WeightError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise WeightError(f"{name} must be finite, got {value}")
    if value < 0:
        raise WeightError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class RoleWeights:
    """Loss weight of each role: L = Σ_t w(role_t)·CE_t / #(tokens with w > 0)."""

    template: float = 0.0
    system: float = 0.0
    instruction: float = 0.0
    response: float = 1.0
    eot: float = 1.0

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_weight(getattr(self, field.name), f"wit weight for role '{field.name}'")
        if not any(self.as_tuple()):
            raise WeightError("all wit role weights are zero: no token would be trained")

    @classmethod
    def preset(cls, name: str, prompt_weight: float = 0.4, response_weight: float = 0.6) -> RoleWeights:
        """``it`` (response only), ``im`` (instruction modelling), ``wit`` (λp/λr), ``cpt`` (every token)."""
        if name == "it":
            return cls(0.0, 0.0, 0.0, 1.0, 1.0)
        if name == "im":
            return cls(0.0, 1.0, 1.0, 1.0, 1.0)
        if name == "cpt":
            return cls(1.0, 1.0, 1.0, 1.0, 1.0)
        if name == "wit":
            return cls(prompt_weight, prompt_weight, prompt_weight, response_weight, response_weight)
        raise WeightError(f"unknown wit_preset {name!r}; choose one of {', '.join(PRESETS)}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RoleWeights:
        """Resolve the user-facing weight keys (see :data:`WEIGHT_KEYS`) to weights; ``None`` means unset.

        Precedence, most specific last: ``wit_preset`` (default ``wit``), then the paper's group weights
        ``wit_prompt_weight`` (template, system, instruction) and ``wit_response_weight`` (response, eot),
        then the per-role ``wit_<role>_weight`` keys.
        """
        preset = options.get("wit_preset") or "wit"
        weights = asdict(cls.preset(preset))
        for key in (*GROUP_KEYS, *ROLE_KEYS):  # checked under the key the user wrote, before it fans out to roles
            if options.get(key) is not None:
                _check_weight(options[key], key)
        prompt, response = options.get("wit_prompt_weight"), options.get("wit_response_weight")
        if prompt is not None:
            weights.update(template=prompt, system=prompt, instruction=prompt)
        if response is not None:
            weights.update(response=response, eot=response)
        for role in TRAINABLE_ROLES:
            value = options.get(f"wit_{role.label}_weight")
            if value is not None:
                weights[role.label] = value
        return cls(**weights)

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(getattr(self, role.label) for role in TRAINABLE_ROLES)

    def table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Weight per role code, ``PAD`` included (always 0): index it with a role tensor."""
        return torch.tensor([*self.as_tuple(), 0.0], dtype=torch.float32, device=device)

    def describe(self) -> str:
        return ", ".join(f"{role.label}={getattr(self, role.label):g}" for role in TRAINABLE_ROLES)


PRESETS: tuple[str, ...] = ("it", "im", "wit", "cpt")
GROUP_KEYS: tuple[str, ...] = ("wit_prompt_weight", "wit_response_weight")
ROLE_KEYS: tuple[str, ...] = tuple(f"wit_{role.label}_weight" for role in TRAINABLE_ROLES)
WEIGHT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(("wit_preset", *GROUP_KEYS, *ROLE_KEYS)))


def message_role(name: object) -> Role:
    """Token role of a chat message's content, from the message's ``role`` field."""
    if not isinstance(name, str) or name not in MESSAGE_ROLES:
        raise ValueError(f"unknown message role {name!r}; known roles: {sorted(MESSAGE_ROLES)}")
    return MESSAGE_ROLES[name]
