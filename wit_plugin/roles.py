"""Token roles and the weights the loss gives them.

Datasets store a role *code* per token, never a weight, so the weights can change between runs without
re-tokenising. Every preset of the paper family (standard instruction tuning, instruction modelling,
weighted instruction tuning, continued pre-training) is a :class:`RoleWeights`.

This module imports no framework (not even torch): the ``wit`` CLI reads it before deciding what to load.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from wit_plugin.schedules import Schedule, WeightError, check_weight, parse_schedule

if TYPE_CHECKING:
    import torch


class Role(IntEnum):
    """What a token is, from the point of view of the loss.

    The order is the order of :class:`RoleWeights` fields; ``PAD`` marks padding and packed-sequence starts,
    tokens that are never a target whatever the weights say.
    """

    TEMPLATE = 0  # chat scaffolding the template injects: role headers, default system prompts, BOS
    SYSTEM = 1  # system message content, and tool definitions the template renders
    INSTRUCTION = 2  # user (and tool result) message content
    RESPONSE = 3  # assistant output: content, rendered tool calls, the template's markup inside the turn
    EOT = 4  # the text the template writes to close an assistant turn (<|im_end|>, <|eot_id|>, </s>...)
    REASONING = 5  # assistant reasoning: ``reasoning_content`` or a template's thinking block
    PAD = 6  # padding, or the first token of a packed sequence: never a target

    @property
    def label(self) -> str:
        return self.name.lower()


ROLES_KEY = "wit_roles"  # the dataset and batch column of role codes, one per token
IGNORE_INDEX = -100  # a label (or target) that is not scored: PyTorch's cross-entropy default
# The dataset and batch column of per-token multipliers from the data (a message's ``weight``, Axolotl's
# ``training``/``training_detail``): the token's role weight is multiplied by it. Absent or empty: all 1.
MESSAGE_WEIGHTS_KEY = "wit_message_weights"

TRAINABLE_ROLES: tuple[Role, ...] = tuple(role for role in Role if role is not Role.PAD)
PROMPT_GROUP: tuple[Role, ...] = (Role.TEMPLATE, Role.SYSTEM, Role.INSTRUCTION)  # λp in the WIT paper
RESPONSE_GROUP: tuple[Role, ...] = (Role.RESPONSE, Role.EOT, Role.REASONING)  # λr: what the model generates

# Message "role" strings as chat templates know them, mapped to token roles.
TEMPLATE_ROLES: dict[str, Role] = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.INSTRUCTION,
    "tool": Role.INSTRUCTION,
    "ipython": Role.INSTRUCTION,
    "function": Role.INSTRUCTION,
    "assistant": Role.RESPONSE,
    "model": Role.RESPONSE,
}
# ShareGPT's names for template roles (Axolotl renames them when a dataset sets no ``roles``).
ROLE_ALIASES: dict[str, str] = {"human": "user", "gpt": "assistant"}
# Message "role" strings as they appear in chat datasets, mapped to token roles.
MESSAGE_ROLES: dict[str, Role] = {
    **TEMPLATE_ROLES,
    **{alias: TEMPLATE_ROLES[name] for alias, name in ROLE_ALIASES.items()},
}

# The fields of a chat row unless its dataset renames them (Axolotl: ``field_messages``,
# ``message_property_mappings``, ``field_tools``): {"messages": [{"role": ..., "content": ...}], "tools": [...]};
# and the field of a raw-text row (Axolotl's ``field``, TRL's ``dataset_text_field``).
MESSAGES_FIELD, ROLE_FIELD, CONTENT_FIELD, TOOLS_FIELD = "messages", "role", "content", "tools"
TEXT_FIELD = "text"


PRESETS: tuple[str, ...] = ("it", "im", "wit", "cpt")
DEFAULT_PROMPT_WEIGHT = 0.4  # the wit preset's λp and λr (the WIT paper's best region)
DEFAULT_RESPONSE_WEIGHT = 0.6


@dataclass(frozen=True)
class RoleWeights:
    """Loss weight of each role: L = Σ_t w(role_t)·CE_t / #(tokens with w > 0)."""

    template: float = 0.0
    system: float = 0.0
    instruction: float = 0.0
    response: float = 1.0
    eot: float = 1.0
    reasoning: float = 1.0

    def __post_init__(self) -> None:
        for field in fields(self):
            check_weight(getattr(self, field.name), f"wit weight for role '{field.name}'")
        if not any(self.as_tuple()):
            raise WeightError("all wit role weights are zero: no token would be trained")

    @classmethod
    def groups(cls, prompt: float, response: float) -> RoleWeights:
        """λp on every prompt-group role, λr on every response-group role (the paper's two weights)."""
        return cls(**{role.label: prompt for role in PROMPT_GROUP}, **{role.label: response for role in RESPONSE_GROUP})

    @classmethod
    def preset(cls, name: str) -> RoleWeights:
        """``it`` (response only), ``im`` (instruction modelling), ``wit`` (λp/λr), ``cpt`` (every token)."""
        if name == "it":
            return cls.groups(0.0, 1.0)
        if name == "im":
            return cls(**{**asdict(cls.groups(1.0, 1.0)), "template": 0.0})
        if name == "cpt":
            return cls.groups(1.0, 1.0)
        if name == "wit":
            return cls.groups(DEFAULT_PROMPT_WEIGHT, DEFAULT_RESPONSE_WEIGHT)
        raise WeightError(f"unknown wit_preset {name!r}; choose one of {', '.join(PRESETS)}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RoleWeights:
        """The constant weights the keys (see :data:`WEIGHT_KEYS`) resolve to; a schedule is refused here (read
        those with :meth:`RoleSchedules.from_options`)."""
        schedules = RoleSchedules.from_options(options)
        if not schedules.constant:
            raise WeightError(f"weights follow schedules ({schedules.describe()}): no one set of weights")
        return schedules.initial

    def as_tuple(self) -> tuple[float, ...]:
        """Weights in role-code order (``PAD`` excluded)."""
        return tuple(getattr(self, role.label) for role in TRAINABLE_ROLES)

    def by_code(self) -> tuple[float, ...]:
        """Weight per role code, ``PAD`` included (always 0)."""
        return (*self.as_tuple(), 0.0)

    def table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Weight per role code as a tensor: index it with a role tensor."""
        import torch

        return torch.tensor(self.by_code(), dtype=torch.float32, device=device)

    def describe(self) -> str:
        return ", ".join(f"{role.label}={getattr(self, role.label):g}" for role in TRAINABLE_ROLES)


def weight_key(role: Role) -> str:
    """The option that sets ``role``'s weight alone (``wit_eot_weight``)."""
    return f"wit_{role.label}_weight"


# The response role's key is also the response group's (λr): it sets response, eot and reasoning.
GROUP_KEYS: tuple[str, ...] = ("wit_prompt_weight", weight_key(Role.RESPONSE))
ROLE_KEYS: tuple[str, ...] = tuple(key for key in map(weight_key, TRAINABLE_ROLES) if key not in GROUP_KEYS)
WEIGHT_KEYS: tuple[str, ...] = ("wit_preset", *GROUP_KEYS, *ROLE_KEYS)
# The roles each weight key sets, least specific first: a later key set for a role replaces an earlier one's value.
KEY_ROLES: dict[str, tuple[Role, ...]] = {
    **dict(zip(GROUP_KEYS, (PROMPT_GROUP, RESPONSE_GROUP))),
    **{key: (role,) for role in TRAINABLE_ROLES if (key := weight_key(role)) in ROLE_KEYS},
}


def deciding_keys(keys: Collection[str]) -> dict[Role, str]:
    """The key of ``keys`` (the weight keys that are set) whose value each role takes: the most specific one, per
    :data:`KEY_ROLES`; a role no key sets is absent (it takes ``wit_preset``'s weight). The one definition of
    the precedence: :meth:`RoleSchedules.from_options` resolves with it, ``wit tune`` checks its space with it."""
    deciding: dict[Role, str] = {}
    for key, roles in KEY_ROLES.items():
        if key in keys:
            deciding.update(dict.fromkeys(roles, key))
    return deciding


@dataclass(frozen=True)
class RoleSchedules:
    """Each role's weight over training (:mod:`wit_plugin.schedules`); constant weights are constant schedules."""

    schedules: tuple[Schedule, ...]  # in role-code order, PAD excluded

    def __post_init__(self) -> None:
        # A zero of each schedule starts at one of its breakpoints, so all weights are zero together somewhere
        # exactly when they are at one of them.
        for progress in sorted({point for schedule in self.schedules for point in schedule.breakpoints()}):
            if not any(schedule.at(progress) for schedule in self.schedules):
                raise WeightError(
                    f"all wit role weights are zero at training progress {progress:g} ({self.describe()}): "
                    "no token would be trained"
                )

    @classmethod
    def of(cls, weights: RoleWeights | RoleSchedules) -> RoleSchedules:
        """Constant weights as constant schedules (schedules as they are): what trainers and records take."""
        return weights if isinstance(weights, RoleSchedules) else cls(tuple(Schedule(w, w) for w in weights.as_tuple()))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RoleSchedules:
        """Resolve the user-facing weight keys (see :data:`WEIGHT_KEYS`), each a number or a schedule mapping;
        ``None`` means unset.

        Precedence, most specific last: ``wit_preset`` (default ``wit``), then the paper's group weights
        ``wit_prompt_weight`` (template, system, instruction) and ``wit_response_weight`` (response, eot,
        reasoning), then the per-role ``wit_<role>_weight`` keys.
        """
        preset = RoleWeights.preset(options.get("wit_preset") or "wit")
        schedules = {role.label: Schedule(w, w) for role, w in zip(TRAINABLE_ROLES, preset.as_tuple())}
        parsed: dict[str, Schedule] = {}
        for key in (*GROUP_KEYS, *ROLE_KEYS):  # checked under the key the user wrote, before it fans out to roles
            if options.get(key) is not None:
                parsed[key] = parse_schedule(options[key], key)  # a ScheduleError is a WeightError
        for role, key in deciding_keys(parsed).items():
            schedules[role.label] = parsed[key]
        return cls(tuple(schedules[role.label] for role in TRAINABLE_ROLES))

    @property
    def constant(self) -> bool:
        return all(schedule.constant for schedule in self.schedules)

    def at(self, progress: float) -> RoleWeights:
        """The weights in effect at training ``progress`` (:func:`wit_plugin.schedules.progress`)."""
        return RoleWeights(*(schedule.at(progress) for schedule in self.schedules))

    @property
    def initial(self) -> RoleWeights:
        return self.at(0.0)

    @property
    def ever(self) -> RoleWeights:
        """Each role's largest weight over the run: a role is never trained exactly where this is 0."""
        return RoleWeights(*(max(schedule.start, schedule.end) for schedule in self.schedules))

    def as_json(self) -> dict[str, Any]:
        """By role label: a number (constant) or the schedule mapping, as the run record keeps them."""
        return {role.label: schedule.as_json() for role, schedule in zip(TRAINABLE_ROLES, self.schedules)}

    def describe(self) -> str:
        return ", ".join(f"{role.label}={s.describe()}" for role, s in zip(TRAINABLE_ROLES, self.schedules))


def message_role(name: object) -> Role:
    """Token role of a chat message's content, from the message's ``role`` field."""
    if not isinstance(name, str) or name not in MESSAGE_ROLES:
        raise ValueError(f"unknown message role {name!r}; known roles: {sorted(MESSAGE_ROLES)}")
    return MESSAGE_ROLES[name]
