"""``WITConfig``: TRL's ``SFTConfig`` plus the ``wit_*`` weight keys, checked when the config is built.

The keys, presets and precedence are the Axolotl plugin's (:meth:`RoleWeights.from_options` resolves both),
so a weight that would make training silently wrong fails here, not at the first step. SFTConfig options
that would compute the loss some other way, or decide on their own which tokens are trained, fail too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from wit_plugin.roles import PRESETS, WEIGHT_KEYS, RoleWeights
from wit_plugin.trainer import LOSS_IMPLS, ROLE_METRICS


class WITOptionError(ValueError):
    """A TRL option that would bypass or contradict the role weights."""


@dataclass
class WITConfig(SFTConfig):
    """SFTConfig with the WIT role weights. Unset weights fall back to the preset (default ``wit``: λp=0.4, λr=0.6).

    ``loss_type`` defaults to ``"nll"`` (TRL 1.9 defaults to ``"chunked_nll"``, which never builds the logits
    the weighted loss needs) and must stay so.
    """

    wit_preset: str | None = field(
        default=None, metadata={"help": f"Role-weight preset: {', '.join(PRESETS)} (default wit)."}
    )
    wit_prompt_weight: float | None = field(
        default=None, metadata={"help": "λp: weight of template, system and instruction tokens (wit preset: 0.4)."}
    )
    wit_response_weight: float | None = field(
        default=None, metadata={"help": "λr: weight of response and end-of-turn tokens (wit preset: 0.6)."}
    )
    wit_template_weight: float | None = field(default=None, metadata={"help": "Weight of chat-template tokens."})
    wit_system_weight: float | None = field(default=None, metadata={"help": "Weight of system-message tokens."})
    wit_instruction_weight: float | None = field(default=None, metadata={"help": "Weight of user/tool-message tokens."})
    wit_eot_weight: float | None = field(default=None, metadata={"help": "Weight of the token closing a response."})
    wit_loss_impl: str = field(
        default="eager",
        metadata={"help": f"{', '.join(LOSS_IMPLS)}. Fused ones save memory but log no entropy/mean_token_accuracy."},
    )
    wit_role_metrics: str = field(default="all", metadata={"help": f"Per-role metrics: {', '.join(ROLE_METRICS)}."})
    loss_type: str | None = field(
        default="nll", metadata={"help": "Must be 'nll': WIT computes its weighted NLL from the model's logits."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_options(self)

    @property
    def role_weights(self) -> RoleWeights:
        return RoleWeights.from_options({key: getattr(self, key) for key in WEIGHT_KEYS})


def check_options(args: WITConfig) -> RoleWeights:
    """Resolve the weights and reject conflicting SFTConfig options, naming each; returns the weights."""
    weights = args.role_weights
    prompt_side = {"template": weights.template, "system": weights.system, "instruction": weights.instruction}
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
    if args.wit_loss_impl not in LOSS_IMPLS:
        problems.append(f"wit_loss_impl={args.wit_loss_impl!r}: choose one of {', '.join(LOSS_IMPLS)}")
    if args.wit_role_metrics not in ROLE_METRICS:
        problems.append(f"wit_role_metrics={args.wit_role_metrics!r}: choose one of {', '.join(ROLE_METRICS)}")
    packs = args.packing or args.eval_packing
    if packs and args.packing_strategy == "wrapped":
        problems.append("packing_strategy='wrapped' cuts sequences without boundaries; use 'bfd' or 'bfd_split'")
    if problems:
        raise WITOptionError("WITConfig cannot train with:\n  - " + "\n  - ".join(problems))
    return weights
