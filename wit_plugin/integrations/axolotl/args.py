"""The plugin's YAML keys as a pydantic model, which Axolotl merges into its config schema.

The fields are derived from :data:`wit_plugin.options.OPTIONS` (one definition of every key); each
cross-option rule is one named validator calling the shared check for that concern.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from wit_plugin import options


def _field(option: options.Option) -> tuple[Any, Any]:
    kind: Any = option.annotation
    if option.choices and not option.multiple:
        kind = Literal[option.choices] if option.default is not None else Literal[option.choices] | None
    constraints = {"ge": option.minimum} if option.minimum is not None else {}
    if option.type is float:
        constraints["allow_inf_nan"] = False
    return kind, Field(default=option.default, description=option.help, **constraints)


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
    def conditions_are_known(self) -> WITArgs:
        options.OPTION_BY_NAME["wit_crosstask_conditions"].check(self.wit_crosstask_conditions)
        return self

    @model_validator(mode="after")
    def posix_has_prompts(self) -> WITArgs:
        options.check_posix(self.model_dump())
        return self

    @model_validator(mode="after")
    def crosstask_has_data(self) -> WITArgs:
        options.check_crosstask(self.model_dump())
        return self


WIT_KEYS: frozenset[str] = frozenset(WITArgs.model_fields)
