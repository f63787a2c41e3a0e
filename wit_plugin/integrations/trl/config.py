"""``WITConfig``: TRL's ``SFTConfig`` plus every ``wit_*`` option, checked when the config is built.

The fields come from :data:`wit_plugin.options.OPTIONS` (the same keys, defaults and checks as the Axolotl
plugin), so a weight that would make training silently wrong fails here, not at the first step. SFTConfig
options that would compute the loss some other way, or decide on their own which tokens are trained, fail too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from trl import SFTConfig

from wit_plugin import options
from wit_plugin.roles import PROMPT_GROUP, RoleSchedules, RoleWeights
from wit_plugin.training.mixin import check_fused_loss, parameter_sharding

T = TypeVar("T")


class WITOptionError(options.OptionError):
    """A TRL option that would bypass or contradict the role weights."""


def with_wit_options(cls: type[T]) -> type[T]:
    """Add one dataclass field per ``wit_*`` option to ``cls`` (before ``@dataclass`` processes it)."""
    for option in options.OPTIONS:
        # A weight may also be a schedule mapping (in Python or a YAML config); the annotation stays the number the
        # command line takes (HfArgumentParser allows no other union), and __post_init__ checks either strictly.
        cls.__annotations__[option.name] = option.annotation
        setattr(cls, option.name, field(default=option.default, metadata={"help": option.help}))
    return cls


@dataclass
@with_wit_options
class WITConfig(SFTConfig):
    """SFTConfig with the WIT role weights and evaluation options (see README's YAML reference).

    ``loss_type`` defaults to ``"nll"`` (TRL 1.9 defaults to ``"chunked_nll"``, which never builds the logits
    an eager weighted loss needs) and must stay so.
    """

    loss_type: str | None = field(default="nll", metadata={"help": "Must be 'nll': WIT computes its own weighted NLL."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_options(self)

    @property
    def wit_options(self) -> dict[str, Any]:
        return {option.name: getattr(self, option.name) for option in options.OPTIONS}

    @property
    def role_weights(self) -> RoleWeights:
        """The constant weights (an error when a weight follows a schedule: see :attr:`role_schedules`)."""
        return RoleWeights.from_options(self.wit_options)

    @property
    def role_schedules(self) -> RoleSchedules:
        return options.check_weights(self.wit_options)


def check_options(args: WITConfig) -> RoleSchedules:
    """Check the wit options and reject conflicting SFTConfig options, naming each; returns the weights."""
    schedules = options.check_all(args.wit_options)
    weights = schedules.ever  # a role is trained at some step exactly where its largest weight is > 0
    prompt_side = {role.label: getattr(weights, role.label) for role in PROMPT_GROUP}
    problems = []
    if args.loss_type != "nll":
        problems.append(f"loss_type={args.loss_type!r}: WIT computes its own weighted NLL; use loss_type='nll'")
    if args.use_liger_kernel:
        problems.append("use_liger_kernel=True: Liger's fused cross-entropy bypasses the per-token weights")
    if args.label_smoothing_factor:
        problems.append("label_smoothing_factor: label smoothing is not part of the WIT loss; set it to 0")
    if args.assistant_only_loss:
        problems.append("assistant_only_loss=True: the role weights choose the trained tokens; use wit_preset='it'")
    if args.completion_only_loss and any(prompt_side.values()):
        trained = ", ".join(f"{role}={value:g}" for role, value in prompt_side.items() if value)
        problems.append(f"completion_only_loss=True contradicts prompt-side weights {trained}; use wit_preset='it'")
    if args.completion_only_loss is False and not all(weights.as_tuple()):
        problems.append(
            f"completion_only_loss=False trains every token but the weights are {weights.describe()}; "
            "use wit_preset='cpt' or leave completion_only_loss unset"
        )
    try:
        check_fused_loss(args.wit_loss_impl, parameter_sharding(args.fsdp, args.deepspeed))
    except ValueError as error:
        problems.append(str(error))
    packs = args.packing or args.eval_packing
    if packs and args.packing_strategy == "wrapped":
        problems.append("packing_strategy='wrapped' cuts sequences without boundaries; use 'bfd' or 'bfd_split'")
    if problems:
        raise WITOptionError("WITConfig cannot train with:\n  - " + "\n  - ".join(problems))
    return schedules
