"""The plugin's YAML keys, validated by Axolotl's config schema (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from wit_plugin.roles import WEIGHT_KEYS, RoleWeights
from wit_plugin.trainer import LOSS_IMPLS, ROLE_METRICS

NonNegative = Field(default=None, ge=0, allow_inf_nan=False)


class WITArgs(BaseModel):
    """``wit_*`` keys. Unset weights fall back to the preset (default ``wit``: λp=0.4, λr=0.6)."""

    wit_preset: Literal["it", "im", "wit", "cpt"] | None = None
    wit_prompt_weight: float | None = NonNegative
    wit_response_weight: float | None = NonNegative
    wit_template_weight: float | None = NonNegative
    wit_system_weight: float | None = NonNegative
    wit_instruction_weight: float | None = NonNegative
    wit_eot_weight: float | None = NonNegative
    # auto: fused linear CE (chunked on CPU, cut-cross-entropy on CUDA when installed), eager as the fallback
    wit_loss_impl: Literal[LOSS_IMPLS] = "auto"  # type: ignore[valid-type]
    wit_role_metrics: Literal[ROLE_METRICS] = "all"  # type: ignore[valid-type]
    # POSIX prompt sensitivity on held-out prompt sets (JSONL, {"prompts": [...]} per line) every N steps
    wit_posix_prompts: str | None = None
    wit_posix_steps: int | None = Field(default=None, ge=1)
    wit_posix_max_new_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _weights_resolve(self) -> WITArgs:
        RoleWeights.from_options(self.model_dump(include=set(WEIGHT_KEYS)))  # not all zero, finite, >= 0
        return self


WIT_KEYS: frozenset[str] = frozenset(WITArgs.model_fields)
