"""The plugin's YAML keys as a pydantic model, which Axolotl merges into its config schema.

The fields are derived from :data:`wit_plugin.options.OPTIONS` (one definition of every key); each
cross-option rule is one named validator calling the shared check for that concern.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from wit_plugin import options


def _field(option: options.Option) -> tuple[Any, Any]:
    """Optional (``null`` in YAML means unset, as everywhere) and strict (``"0.5"`` is not a number here either)."""
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
