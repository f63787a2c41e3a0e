"""Axolotl dataset strategies that tag every token with its role.

Axolotl resolves a dataset ``type: pkg.module`` by importing the module and calling its ``load``; each submodule
here is one such type. Users keep writing ``type: chat_template`` / ``alpaca``: the plugin's ``register``
rewrites those to these modules (which also changes the prepared-dataset cache hash); which type becomes which
module, and the tagger each dataset gets, is :mod:`wit_plugin.integrations.axolotl.dataset_types`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wit_plugin.integrations.axolotl.dataset_types import as_dict, dataset_tagger
from wit_plugin.jsonl import describe_row, find_row
from wit_plugin.tagging import RoleTagger, TaggedSequence, TaggingError
from wit_plugin.tagging.audit import UnreadKeys
from wit_plugin.tagging.dropped import DROPPED_KEY, UNKNOWN_DATASET, dropped_column

LOG = logging.getLogger(__name__)


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
            starts = range(0, len(tagged.input_ids), self.sequence_len)
            for key, column in tagged.as_features().items():
                # (message weights are empty when all 1: each piece's then too)
                pieces = [column[start : start + self.sequence_len] for start in starts]
                columns.setdefault(key, []).extend(pieces)
            first, rest = dropped_column(self.dataset, tagged.dropped_kinds), dropped_column(self.dataset, ())
            columns.setdefault(DROPPED_KEY, []).extend([first, *[rest] * len(pieces)][: len(pieces)])
        return columns


def _require_plugin() -> None:
    """A failed plugin import is only logged by Axolotl; training with these strategies would then be unweighted."""
    from axolotl.integrations.base import PluginManager

    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    if not any(isinstance(plugin, WITPlugin) for plugin in PluginManager.get_instance().plugins.values()):
        raise RuntimeError(
            "wit_plugin dataset strategies need the plugin: add `plugins: [wit_plugin.WITPlugin]` to the "
            "config (if it is there, its import failed: see the error above)"
        )


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
    wanted = {key: value for key, value in as_dict(ds_cfg).items() if key not in _EXPANSION_KEYS}
    for entries in lists:
        for index, entry in enumerate(entries):
            if {key: value for key, value in as_dict(entry).items() if key not in _EXPANSION_KEYS} == wanted:
                return index
    return UNKNOWN_DATASET


def make_loader(row_format: str) -> Callable[..., RoleTaggingStrategy]:
    """The ``load`` function Axolotl calls for a dataset of this row format."""

    def load(tokenizer: Any, cfg: Any, ds_cfg: Any = None, processor: Any = None) -> RoleTaggingStrategy:
        _require_plugin()
        tagger = dataset_tagger(tokenizer, cfg, ds_cfg, row_format)
        strategy = ChunkedTextStrategy if row_format == "text" else RoleTaggingStrategy
        source = as_dict(ds_cfg).get("path")
        return strategy(tagger, tokenizer, cfg.sequence_len, source=source, dataset=dataset_position(cfg, ds_cfg))

    return load
