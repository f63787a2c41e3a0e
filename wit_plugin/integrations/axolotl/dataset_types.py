"""Axolotl's dataset types, as wit_plugin tags them: which stock ``type`` becomes which strategy module of
:mod:`wit_plugin.integrations.axolotl.strategies`, the row format each one tags, and the tagger a dataset entry
gets (its chat options, its length handling).

The plugin (rewriting the types at ``register``), the strategies (tagging rows), the run record and ``wit
inspect`` all read this module; it imports neither the plugin nor the strategies.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from wit_plugin import options
from wit_plugin.roles import CONTENT_FIELD, MESSAGES_FIELD, ROLE_ALIASES, ROLE_FIELD, TEXT_FIELD, TOOLS_FIELD
from wit_plugin.tagging import RoleTagger

LOG = logging.getLogger(__name__)

# Each strategy module (of STRATEGIES) and the row format it tags; and the stock Axolotl types each one replaces.
MODULE_FORMATS = {"chat_template": "chat", "alpaca": "alpaca", "prompt_completion": "prompt_completion", "text": "text"}
# A chat strategy module with this suffix drops what its chat template does not render (wit_drop_unrendered).
DROP_SUFFIX = "_drop_unrendered"
STOCK_TYPE_MODULES = {"chat_template": "chat_template", "alpaca": "alpaca", "completion": "text"}
STRATEGIES = "wit_plugin.integrations.axolotl.strategies"
STOCK_TYPES = {stock: f"{STRATEGIES}.{module}" for stock, module in STOCK_TYPE_MODULES.items()}
OWN_TYPES = frozenset(f"{STRATEGIES}.{module}" for module in MODULE_FORMATS)
CHAT_MODULES = ("chat_template", "prompt_completion")  # what a chat template renders (wit_drop_unrendered)

# Stock chat_template options whose job the role weights now do: accepted, ignored, and said so.
SUPERSEDED_OPTIONS = ("roles_to_train", "train_on_eos", "train_on_eot")
# Axolotl's role names when a dataset sets no ``roles`` (ShareGPT's human/gpt become user/assistant).
DEFAULT_ROLE_MAP = dict(ROLE_ALIASES)
# Stock options that would change which text is trained and that these strategies do not implement.
UNSUPPORTED_OPTIONS = (
    "split_thinking",
    "drop_system_message",
)
# The message property (Axolotl's ``message_property_mappings``) that holds a message's weight: a dataset's
# ``wit_message_weight_field`` is carried there (Axolotl's schema drops unknown keys of a dataset entry).
WEIGHT_PROPERTY = "weight"


class WITConfigError(ValueError):
    """The Axolotl config asks for something the WIT plugin cannot do correctly."""


def strategy_module(kind: str) -> str | None:
    """The strategy module (``chat_template``...) a dataset ``type`` names, if it is one of ours."""
    kind = kind.removesuffix(DROP_SUFFIX)
    return kind.rsplit(".", 1)[-1] if kind in OWN_TYPES else None


def dataset_format(ds_cfg: Any) -> str | None:
    """The row format (``chat``, ``alpaca``...) a dataset entry mapped by :func:`map_dataset_types` is tagged as;
    None for a type that is not ours."""
    module = strategy_module(str(as_dict(ds_cfg).get("type")))
    return None if module is None else MODULE_FORMATS[module]


def map_dataset_types(cfg: Any) -> None:
    """Point every dataset at its role-tagging strategy; anything we cannot tag is an error.

    A dataset's ``wit_drop_unrendered`` (else the config's) is carried in its ``type`` (module
    ``chat_template_drop_unrendered``): Axolotl's schema drops keys it does not know from a dataset entry, and the
    ``type`` is part of the prepared dataset's hash, so a dataset tagged the other way is not reused.
    """
    for key in ("datasets", "test_datasets"):
        for index, dataset in enumerate(cfg.get(key) or []):
            try:
                options.check_dataset_options(dataset, f"{key}[{index}]")
            except options.OptionError as error:
                raise WITConfigError(str(error)) from None
            kind = dataset.get("type") or "chat_template"  # Axolotl's default for messages datasets
            if not isinstance(kind, str):
                raise WITConfigError(f"{key}[{index}].type: custom type definitions cannot be role-tagged: {kind!r}")
            module = strategy_module(kind) or STOCK_TYPE_MODULES.get(kind)
            if module is None:
                raise WITConfigError(
                    f"{key}[{index}].type: {kind!r} cannot be role-tagged by wit_plugin; supported: "
                    f"{sorted(STOCK_TYPES)} or {sorted(OWN_TYPES)}"
                )
            dataset["type"] = f"{STRATEGIES}.{module}"
            _map_weight_field(dataset, f"{key}[{index}]", cfg.get("wit_message_weight_field"))
            drop = dataset.get("wit_drop_unrendered")
            if drop is None:
                drop = cfg.get("wit_drop_unrendered")
            if drop and module in CHAT_MODULES:
                dataset["type"] += DROP_SUFFIX
            elif dataset.get("wit_drop_unrendered"):
                raise WITConfigError(
                    f"{key}[{index}].wit_drop_unrendered: only chat datasets render through a chat template, not "
                    f"type {kind!r}"
                )


def _map_weight_field(dataset: dict[str, Any], where: str, config_field: str | None) -> None:
    """A dataset's ``wit_message_weight_field`` (else the config's, for a dataset that maps no weight key) becomes
    its ``message_property_mappings: {weight: <key>}``, which Axolotl keeps and hashes with the prepared dataset:
    a dataset tagged under another key is tagged again, not reused with the old key's weights."""
    field = dataset.get("wit_message_weight_field")
    mappings = dict(dataset.get("message_property_mappings") or {})
    if field is None:
        if config_field is None or WEIGHT_PROPERTY in mappings:
            return
        field = config_field
    if mappings.get(WEIGHT_PROPERTY, field) != field:
        raise WITConfigError(
            f"{where}: wit_message_weight_field {field!r} and message_property_mappings.{WEIGHT_PROPERTY} "
            f"{mappings[WEIGHT_PROPERTY]!r} name different keys; keep one"
        )
    dataset["message_property_mappings"] = {**mappings, WEIGHT_PROPERTY: field}


def weight_field(cfg: Any, ds_cfg: Any) -> str:
    """The key holding a message's (or a plain row's) weight in one dataset: its own, else the config's."""
    mappings = as_dict(ds_cfg).get("message_property_mappings") or {}
    return mappings.get(WEIGHT_PROPERTY) or options.resolved(cfg, "wit_message_weight_field")


def as_dict(ds_cfg: Any) -> dict[str, Any]:
    """A dataset entry as a plain dict (Axolotl hands strategies a pydantic model, a dict or nothing)."""
    if ds_cfg is None:
        return {}
    if isinstance(ds_cfg, BaseModel):
        return ds_cfg.model_dump()
    return dict(ds_cfg)


def _check_options(ds_cfg: dict[str, Any]) -> None:
    unsupported = [key for key in UNSUPPORTED_OPTIONS if ds_cfg.get(key)]
    if unsupported:
        raise ValueError(f"dataset options {unsupported} are not supported with wit_plugin; remove them")
    superseded = [key for key in SUPERSEDED_OPTIONS if ds_cfg.get(key) is not None]
    if superseded:
        LOG.warning("wit: dataset options %s are ignored: the wit_* role weights decide what is trained", superseded)


def _chat_options(tokenizer: Any, cfg: Any, ds_cfg: dict[str, Any]) -> dict[str, Any]:
    from axolotl.utils.chat_templates import get_chat_template_from_config

    mappings = ds_cfg.get("message_property_mappings") or {}
    roles = ds_cfg.get("roles")
    role_map = (
        {alias: canonical for canonical, aliases in roles.items() for alias in aliases} if roles else DEFAULT_ROLE_MAP
    )
    return {
        "chat_template": get_chat_template_from_config(cfg=cfg, ds_cfg=ds_cfg, tokenizer=tokenizer),
        "chat_template_name": ds_cfg.get("chat_template") or cfg.get("chat_template"),
        "field_messages": ds_cfg.get("field_messages") or MESSAGES_FIELD,
        "role_field": mappings.get("role") or ds_cfg.get("message_field_role") or ROLE_FIELD,
        "content_field": mappings.get("content") or ds_cfg.get("message_field_content") or CONTENT_FIELD,
        "role_map": role_map,
        "field_tools": ds_cfg.get("field_tools") or TOOLS_FIELD,
        "template_kwargs": dict(cfg.get("chat_template_kwargs") or {}),
        "eot_tokens": list(cfg.get("eot_tokens") or []),
        "drop_unrendered": str(ds_cfg.get("type") or "").endswith(DROP_SUFFIX),
        "training_field": ds_cfg.get("message_field_training") or "training",
        "training_detail_field": ds_cfg.get("message_field_training_detail") or "training_detail",
    }


def truncates(cfg: Any) -> bool:
    """Whether over-long rows are cut (``excess_length_strategy: truncate``) rather than dropped."""
    return (cfg.get("excess_length_strategy") or "drop").lower() == "truncate"


def dataset_tagger(tokenizer: Any, cfg: Any, ds_cfg: Any, row_format: str) -> RoleTagger:
    """The tagger training uses for one dataset of an Axolotl config (also what ``wit inspect`` shows).

    Raw text is not truncated: :class:`ChunkedTextStrategy` cuts it into rows instead. Elsewhere Axolotl's own
    truncation would cut only the columns it knows, so ``excess_length_strategy: truncate`` truncates every
    column here.
    """
    entry = as_dict(ds_cfg)
    _check_options(entry)
    kwargs = _chat_options(tokenizer, cfg, entry) if row_format in ("chat", "prompt_completion") else {}
    kwargs["weight_field"] = weight_field(cfg, entry)
    if row_format == "text":
        return RoleTagger(tokenizer, row_format, field=entry.get("field") or TEXT_FIELD, **kwargs)
    return RoleTagger(tokenizer, row_format, max_length=cfg.sequence_len if truncates(cfg) else None, **kwargs)


def tagging_record(tokenizer: Any, cfg: Any, ds_cfg: Any) -> dict[str, Any]:
    """How one dataset of the config is tagged (row format and the tagger's options, its chat template included),
    for the run record: enough to tag held-out rows the same way without Axolotl."""
    row_format = dataset_format(ds_cfg)
    if row_format is None:
        return {}
    tagger = dataset_tagger(tokenizer, cfg, ds_cfg, row_format)
    kept = {key: value for key, value in tagger.options.items() if key != "chat_template_name"}
    return {"format": row_format, "options": kept, "max_length": tagger.max_length}
