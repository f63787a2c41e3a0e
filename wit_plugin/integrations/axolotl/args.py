"""The plugin's YAML keys as a pydantic model, which Axolotl merges into its config schema.

The fields are derived from :data:`wit_plugin.options.OPTIONS` (one definition of every key); each
cross-option rule is one named validator calling the shared check for that concern.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from wit_plugin import options


def _field(option: options.Option) -> tuple[Any, Any]:
    """Optional (``null`` in YAML means unset, as everywhere) and strict (``"0.5"`` is not a number here either).
    A schedulable weight is a strict number or a mapping, which :func:`wit_plugin.options.check_weights` reads
    (and refuses with the key and field named): the schedule's rules are defined there once."""
    if option.schedulable:
        number = Annotated[float, Field(strict=True, ge=option.minimum, allow_inf_nan=False)]
        mapping = Annotated[dict[str, Any], Field(strict=True)]
        return number | mapping | None, Field(default=option.default, description=option.help)
    constraints: dict[str, Any] = {"ge": option.minimum} if option.minimum is not None else {}
    if option.choices and not option.multiple:
        kind: Any = Literal[option.choices]
    else:
        kind = option.type
        constraints["strict"] = True
    if option.type is float:
        constraints["allow_inf_nan"] = False
    return kind | None, Field(default=option.default, description=option.help, **constraints)


_WITFields: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "_WITFields", **{option.name: _field(option) for option in options.OPTIONS}
)


class WITArgs(_WITFields):  # type: ignore[misc, valid-type]
    """``wit_*`` keys. Unset weights fall back to the preset (default ``wit``: λp=0.4, λr=0.6)."""

    @model_validator(mode="after")
    def weights_resolve(self) -> WITArgs:
        options.check_weights(self.model_dump())
        return self

    @model_validator(mode="after")
    def values_are_valid(self) -> WITArgs:
        options.check_values(self.model_dump())  # what a field type cannot say: comma-separated choices
        return self

    @model_validator(mode="after")
    def posix_has_prompts(self) -> WITArgs:
        options.check_posix(self.model_dump())
        return self

    @model_validator(mode="after")
    def crosstask_has_data(self) -> WITArgs:
        options.check_crosstask(self.model_dump())
        return self

    # The two checks below read Axolotl's own keys: in Axolotl's merged schema ``self`` has them (already
    # normalised: deprecated attention booleans mapped onto ``attn_implementation``, LoRA kernels auto-enabled).

    @model_validator(mode="after")
    def packed_rows_kept_apart(self) -> WITArgs:
        from wit_plugin.integrations.axolotl.plugin import packing_attention_problems

        _refuse(packing_attention_problems(_axolotl_keys(self)))
        return self

    @model_validator(mode="after")
    def lora_kernels_have_cuda(self) -> WITArgs:
        from wit_plugin.integrations.axolotl.plugin import lora_kernel_problems

        _refuse(lora_kernel_problems(_axolotl_keys(self)))
        return self


def _axolotl_keys(model: BaseModel) -> dict[str, Any]:
    return {key: getattr(model, key, None) for key in AXOLOTL_KEYS}


AXOLOTL_KEYS = (
    "sample_packing",
    "eval_sample_packing",
    "attn_implementation",
    "adapter",
    "use_cpu",
    "lora_mlp_kernel",
    "lora_qkv_kernel",
    "lora_o_kernel",
    "lora_embedding_kernel",
)


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ValueError("wit_plugin cannot train with:\n  - " + "\n  - ".join(problems))
