"""The plugin's YAML keys, validated by Axolotl's config schema (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from wit_plugin.roles import RoleWeights

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

    @model_validator(mode="after")
    def _weights_resolve(self) -> WITArgs:
        RoleWeights.from_options(self.model_dump())  # not all zero, finite, >= 0
        return self


WIT_KEYS: frozenset[str] = frozenset(WITArgs.model_fields)
