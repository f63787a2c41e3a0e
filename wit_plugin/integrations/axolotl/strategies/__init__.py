"""Axolotl dataset strategies that tag every token with its role.

Axolotl resolves a dataset ``type: pkg.module`` by importing the module and calling its ``load``; each submodule
here is one such type. Users keep writing ``type: chat_template`` / ``alpaca``: the plugin's ``register``
rewrites those to these modules (which also changes the prepared-dataset cache hash).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from wit_plugin.jsonl import describe_row, find_row
from wit_plugin.roles import CONTENT_FIELD, MESSAGES_FIELD, ROLE_ALIASES, ROLE_FIELD, TEXT_FIELD, TOOLS_FIELD
from wit_plugin.tagging import RoleTagger, TaggedSequence, TaggingError
from wit_plugin.tagging.audit import UnreadKeys
from wit_plugin.tagging.dropped import DROPPED_KEY, UNKNOWN_DATASET, dropped_column

LOG = logging.getLogger(__name__)

# Each strategy module here and the row format it tags; and the stock Axolotl types each one replaces.
MODULE_FORMATS = {"chat_template": "chat", "alpaca": "alpaca", "prompt_completion": "prompt_completion", "text": "text"}
# A chat strategy module with this suffix drops what its chat template does not render (wit_drop_unrendered).
DROP_SUFFIX = "_drop_unrendered"
STOCK_TYPE_MODULES = {"chat_template": "chat_template", "alpaca": "alpaca", "completion": "text"}

# Stock chat_template options whose job the role weights now do: accepted, ignored, and said so.
SUPERSEDED_OPTIONS = ("roles_to_train", "train_on_eos", "train_on_eot")
# Axolotl's role names when a dataset sets no ``roles``: ShareGPT's human/gpt become user/assistant, every other
# name is rendered as written.
DEFAULT_ROLE_MAP = dict(ROLE_ALIASES)
# Stock options that would change which text is trained and that these strategies do not implement.
UNSUPPORTED_OPTIONS = (
    "message_field_training",
    "message_field_training_detail",
    "split_thinking",
    "drop_system_message",
)


class RoleTaggingStrategy:
    """Axolotl prompt strategy: a row → ``input_ids``, ``attention_mask``, ``labels``, ``wit_roles`` and
    ``wit_dropped`` (what was dropped from it, with ``dataset``, its position in the config's list).

    A row the tagger refuses is reported with its dataset file and line (found again in the file, since
    Axolotl maps rows without their index), and the first row whose assistant turn has no end of turn is named
    in a warning.
    """

    filter_rows = None
    supports_batched = False

    def __init__(
        self,
        tagger: RoleTagger,
        tokenizer: Any,
        sequence_len: int,
        source: str | None = None,
        dataset: int = UNKNOWN_DATASET,
    ) -> None:
        self.tagger = tagger
        self.tokenizer = tokenizer
        self.sequence_len = sequence_len
        self.source = source
        self.dataset = dataset
        self._warned_turn_end = False
        self._unread = UnreadKeys(source or "?")

    def tag(self, row: Mapping[str, Any]) -> TaggedSequence:
        try:
            tagged = self.tagger.tag(row)
        except TaggingError as error:
            raise TaggingError(f"{self.locate(row)}: {error}") from None
        self._unread.report(tagged, lambda: self.locate(row))
        if tagged.turns_without_end and not self._warned_turn_end:
            self._warned_turn_end = True
            LOG.warning(
                "wit: %s: %d assistant turn(s) without an end-of-turn text (chat template: %s); the dataset total "
                "follows once the dataset is prepared",
                self.locate(row),
                tagged.turns_without_end,
                self.tagger.options.get("chat_template_name") or "the tokenizer's",
            )
        return tagged

    def locate(self, row: Mapping[str, Any]) -> str:
        """``file:line`` of ``row``, or the dataset and the row's start when the file does not hold it as is."""
        line = find_row(self.source, row) if self.source and Path(self.source).is_file() else None
        if line is not None:
            return f"{self.source}:{line}"
        return f"dataset {self.source or '?'}, row {describe_row(row)}"

    def features(self, tagged: TaggedSequence) -> dict[str, list[int]]:
        return {**tagged.as_features(), DROPPED_KEY: dropped_column(self.dataset, tagged.dropped_kinds)}

    def tokenize_prompt(self, prompt: Mapping[str, Any]) -> dict[str, list[int]]:
        return self.features(self.tag(prompt))


class ChunkedTextStrategy(RoleTaggingStrategy):
    """Raw text, cut into ``sequence_len`` pieces as Axolotl's ``completion`` type does: a long document
    becomes several rows instead of one that the length filter would drop."""

    supports_batched = True

    def tokenize_prompt(self, prompt: Mapping[str, list[Any]]) -> dict[str, list[list[int]]]:
        columns: dict[str, list[list[int]]] = {}
        for values in zip(*prompt.values()):
            tagged = self.tag(dict(zip(prompt, values)))
            pieces: list[list[int]] = []
            for key, column in tagged.as_features().items():
                pieces = [
                    column[start : start + self.sequence_len] for start in range(0, len(column), self.sequence_len)
                ]
                columns.setdefault(key, []).extend(pieces)
            first, rest = dropped_column(self.dataset, tagged.dropped_kinds), dropped_column(self.dataset, ())
            columns.setdefault(DROPPED_KEY, []).extend([first, *[rest] * len(pieces)][: len(pieces)])
        return columns


def _as_dict(ds_cfg: Any) -> dict[str, Any]:
    if ds_cfg is None:
        return {}
    if isinstance(ds_cfg, BaseModel):
        return ds_cfg.model_dump()
    return dict(ds_cfg)


def _require_plugin() -> None:
    """A failed plugin import is only logged by Axolotl; training with these strategies would then be unweighted."""
    from axolotl.integrations.base import PluginManager

    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    if not any(isinstance(plugin, WITPlugin) for plugin in PluginManager.get_instance().plugins.values()):
        raise RuntimeError(
            "wit_plugin dataset strategies need the plugin: add `plugins: [wit_plugin.WITPlugin]` to the "
            "config (if it is there, its import failed: see the error above)"
        )


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
    options = _as_dict(ds_cfg)
    _check_options(options)
    kwargs = _chat_options(tokenizer, cfg, options) if row_format in ("chat", "prompt_completion") else {}
    if row_format == "text":
        return RoleTagger(tokenizer, row_format, field=options.get("field") or TEXT_FIELD)
    return RoleTagger(tokenizer, row_format, max_length=cfg.sequence_len if truncates(cfg) else None, **kwargs)


def tagging_record(tokenizer: Any, cfg: Any, ds_cfg: Any) -> dict[str, Any]:
    """How one dataset of the config is tagged (row format and the tagger's options, its chat template included),
    for the run record: enough to tag held-out rows the same way without Axolotl."""
    from wit_plugin.integrations.axolotl.plugin import strategy_module

    module = strategy_module(str(_as_dict(ds_cfg).get("type")))
    if module is None:
        return {}
    tagger = dataset_tagger(tokenizer, cfg, ds_cfg, MODULE_FORMATS[module])
    options = {key: value for key, value in tagger.options.items() if key != "chat_template_name"}
    return {"format": MODULE_FORMATS[module], "options": options, "max_length": tagger.max_length}


# Keys Axolotl adds to a copy of a dataset entry when it expands it into one per ``name`` or per shard.
_EXPANSION_KEYS = ("name", "shards", "shards_idx")


def dataset_position(cfg: Any, ds_cfg: Any) -> int:
    """Where ``ds_cfg`` is in the config's ``datasets`` or ``test_datasets``: Axolotl hands a strategy the entry
    itself, or a copy of it per ``name`` / shard it expands the entry into; ``-1`` when it is in neither."""
    if ds_cfg is None:
        return UNKNOWN_DATASET
    lists = [cfg.get(key) or [] for key in ("datasets", "test_datasets")]
    for entries in lists:
        for index, entry in enumerate(entries):
            if entry is ds_cfg:
                return index
    wanted = {key: value for key, value in _as_dict(ds_cfg).items() if key not in _EXPANSION_KEYS}
    for entries in lists:
        for index, entry in enumerate(entries):
            if {key: value for key, value in _as_dict(entry).items() if key not in _EXPANSION_KEYS} == wanted:
                return index
    return UNKNOWN_DATASET


def make_loader(row_format: str) -> Callable[..., RoleTaggingStrategy]:
    """The ``load`` function Axolotl calls for a dataset of this row format."""

    def load(tokenizer: Any, cfg: Any, ds_cfg: Any = None, processor: Any = None) -> RoleTaggingStrategy:
        _require_plugin()
        tagger = dataset_tagger(tokenizer, cfg, ds_cfg, row_format)
        strategy = ChunkedTextStrategy if row_format == "text" else RoleTaggingStrategy
        source = _as_dict(ds_cfg).get("path")
        return strategy(tagger, tokenizer, cfg.sequence_len, source=source, dataset=dataset_position(cfg, ds_cfg))

    return load
