"""Role-tagged datasets for ``SFTTrainer``: tag, truncate, filter and pack every per-token column together.

TRL's own preparation tokenises without roles, truncates only ``input_ids``/``labels`` and keeps only those
two columns when packing, so the roles would be lost or misaligned. Here rows are tagged by the same
:class:`~wit_plugin.tagging.RoleTagger` formats as the Axolotl strategies; packing is TRL's ``pack_dataset``,
which packs every list column, ``wit_roles`` included. Labels are left to
:class:`~wit_plugin.training.collation.RoleCollator`, which derives them from the roles at collation time.
Multipliers from the data (``wit_message_weights``, empty in a row without any) go along; packing needs every list
column of a row as long as its ``input_ids``, so they are filled with ones first, or dropped when no row has any.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from accelerate import PartialState
from datasets import Dataset, IterableDataset
from trl.data_utils import get_dataset_column_names, is_conversational_from_value, maybe_convert_to_chatml, pack_dataset

from wit_plugin.roles import (
    CONTENT_FIELD,
    MESSAGE_WEIGHTS_KEY,
    MESSAGES_FIELD,
    ROLES_KEY,
    TEXT_FIELD,
    Role,
    RoleWeights,
)
from wit_plugin.tagging import TAGGING_VERSION, RoleTagger, TaggingError
from wit_plugin.tagging.audit import UnreadKeys, audit_turn_ends, dataset_roles
from wit_plugin.tagging.dropped import DROP_KINDS, DROPPED_KEY, describe, dropped_column, sum_dropped
from wit_plugin.tagging.messages import WeightKeys, text_content

LOG = logging.getLogger(__name__)
AnyDataset = Dataset | IterableDataset
TOKEN_COLUMNS = ("input_ids", ROLES_KEY, MESSAGE_WEIGHTS_KEY)
# Row fields whose meaning the taggers do not render.
UNSUPPORTED_FIELDS = {"image": "vision-language data", "images": "vision-language data"}


def check_row(row: Mapping[str, Any]) -> None:
    """Fail on row fields that the role taggers would silently ignore."""
    found = [f"'{name}' ({why})" for name, why in UNSUPPORTED_FIELDS.items() if name in row]
    if found:
        raise ValueError(f"WITSFTTrainer cannot role-tag rows with {', '.join(found)}")


def _map_kwargs(dataset: AnyDataset, num_proc: int | None, desc: str) -> dict[str, Any]:
    """``num_proc`` and ``desc`` exist only for map-style datasets."""
    return {"num_proc": num_proc, "desc": desc} if isinstance(dataset, Dataset) else {}


def text_contents(rows: Iterable[Mapping[str, Any]], field: str = MESSAGES_FIELD) -> list[dict[str, Any]]:
    """``rows`` with every message content a string, text parts joined, so that ``Dataset.from_list`` can hold
    rows that mix string and list contents (Arrow needs one type per column); a non-text part is an error naming
    its row, message and part. ``Dataset.from_list(text_contents(rows))``."""
    converted = []
    for index, row in enumerate(rows):
        messages = row.get(field)
        if isinstance(messages, list):
            try:
                messages = [
                    {**m, CONTENT_FIELD: text_content(m.get(CONTENT_FIELD), f"{field}[{k}].{CONTENT_FIELD}")}
                    if isinstance(m, Mapping) and isinstance(m.get(CONTENT_FIELD), list)
                    else m
                    for k, m in enumerate(messages)
                ]
            except TaggingError as error:
                raise TaggingError(f"row {index}: {error}") from None
        converted.append({**row, field: messages} if field in row else dict(row))
    return converted


def _tag_row(
    row: Mapping[str, Any], index: int, tagger: RoleTagger, name: str, version: int, unread: UnreadKeys
) -> dict[str, list[int]]:
    """``version`` (:data:`TAGGING_VERSION`) is unused here but part of the map's cache fingerprint."""
    try:
        tagged = tagger.tag(row)
    except TaggingError as error:
        raise TaggingError(f"{name} dataset, row {index}: {error}") from None
    unread.report(tagged, lambda: f"{name} dataset, row {index}")
    return {
        "input_ids": tagged.input_ids,
        ROLES_KEY: tagged.roles,
        MESSAGE_WEIGHTS_KEY: tagged.message_weights,
        DROPPED_KEY: dropped_column(0, tagged.dropped_kinds),
    }


def tag_dataset(
    dataset: AnyDataset,
    tokenizer: Any,
    text_field: str,
    num_proc: int | None,
    name: str,
    drop_unrendered: bool = False,
    weight_field: str = WeightKeys.weight,
) -> AnyDataset:
    """Rows (chat ``messages``, ShareGPT ``conversations``, prompt/completion, alpaca, text) → ids, roles, each
    token's multiplier from the data (``weight_field`` of its message, or of a plain row) and what was dropped from
    each (``wit_dropped``: what the chat template does not render, when ``drop_unrendered``, instead of refusing
    the row)."""
    first = next(iter(dataset))
    if is_conversational_from_value(first):  # ShareGPT from/value: TRL's own conversion to role/content
        kwargs = _map_kwargs(dataset, num_proc, f"Converting {name} dataset to ChatML")
        dataset = dataset.map(maybe_convert_to_chatml, remove_columns="conversations", **kwargs)
        first = next(iter(dataset))
    check_row(first)
    custom_text = text_field != TEXT_FIELD and text_field in first
    tagger = RoleTagger(
        tokenizer,
        row_format="text" if custom_text else None,
        field=text_field,
        drop_unrendered=drop_unrendered,
        weight_field=weight_field,
    )
    kwargs = _map_kwargs(dataset, num_proc, f"Role-tagging {name} dataset")
    columns = get_dataset_column_names(dataset)
    fn_kwargs = {"tagger": tagger, "name": name, "version": TAGGING_VERSION, "unread": UnreadKeys(name)}
    return dataset.map(_tag_row, with_indices=True, fn_kwargs=fn_kwargs, remove_columns=columns, **kwargs)


def count_dropped(dataset: AnyDataset, name: str) -> dict[str, int | None]:
    """What ``wit_drop_unrendered`` dropped from a tagged dataset's rows, by kind, summed from their
    ``wit_dropped`` column in this process: exact whether the rows were tagged in worker processes
    (``dataset_num_proc``) or taken from the map's cache (see :mod:`wit_plugin.tagging.dropped`). Logged; ``None``
    counts for an ``IterableDataset``, tagged only as training reads it."""
    totals = sum_dropped([dataset])
    if totals is None:
        LOG.warning(
            "wit: %s dataset: what the chat template does not render is dropped (wit_drop_unrendered) as the "
            "streamed rows are read; it cannot be counted before training",
            name,
        )
        return dict.fromkeys(DROP_KINDS)
    counts = totals.get(0, dict.fromkeys(DROP_KINDS, 0))
    level = logging.WARNING if any(counts.values()) else logging.INFO
    LOG.log(level, "wit: %s dataset: dropped what the chat template does not render: %s", name, describe(counts))
    return counts


def columns_of(dataset: AnyDataset) -> list[str]:
    return list(get_dataset_column_names(dataset) or [])


def _truncate(row: Mapping[str, Any], cut: slice) -> dict[str, Any]:
    return {column: row[column][cut] for column in TOKEN_COLUMNS if column in row}


def _has_target(row: Mapping[str, Any], trained: np.ndarray) -> bool:
    """Whether any token after the first (never a target) has a non-zero weight (role weight × multiplier)."""
    weighted = trained[np.asarray(row[ROLES_KEY][1:], dtype=np.int64)]
    multipliers = row.get(MESSAGE_WEIGHTS_KEY)
    if multipliers is not None and len(multipliers):
        weighted &= np.asarray(multipliers[1:]) > 0
    return bool(weighted.any())


def _full_weights(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's multipliers as long as its ids (ones where it has none), as packing needs."""
    weights = row[MESSAGE_WEIGHTS_KEY]
    return {MESSAGE_WEIGHTS_KEY: weights if len(weights) else np.ones(len(row["input_ids"]), dtype=np.float32)}


def has_message_weights(dataset: AnyDataset) -> bool:
    """Whether some row has multipliers (a non-empty ``wit_message_weights``); always assumed for a stream."""
    if not isinstance(dataset, Dataset):
        return MESSAGE_WEIGHTS_KEY in (dataset.column_names or [])
    if MESSAGE_WEIGHTS_KEY not in dataset.column_names:
        return False
    import pyarrow.compute as pc

    column = dataset.with_format("arrow").select_columns([MESSAGE_WEIGHTS_KEY])[:][MESSAGE_WEIGHTS_KEY]
    return bool(pc.max(pc.list_value_length(column)).as_py() or 0)


def warn_unused_weight_field(dataset: AnyDataset, field: str, name: str) -> None:
    """A weight key the user named (not the default) that weights no row is likely misspelt: one warning."""
    if field != WeightKeys.weight and isinstance(dataset, Dataset) and not has_message_weights(dataset):
        LOG.warning(
            "wit: %s dataset: no row carries a weight other than 1 under wit_message_weight_field=%r: check the "
            "key's name (every token keeps its role weight)",
            name,
            field,
        )


def _mark_sequence_starts(row: Mapping[str, Any]) -> dict[str, list[int]]:
    """First token of every packed sequence is ``PAD``: its prediction would cross a boundary."""
    roles = list(row[ROLES_KEY])
    for start in np.cumsum([0, *row["seq_lengths"][:-1]]):
        roles[int(start)] = Role.PAD
    return {ROLES_KEY: roles}


def truncation_slice(mode: str, max_length: int) -> slice:
    if mode == "keep_start":
        return slice(None, max_length)
    if mode == "keep_end":
        return slice(-max_length, None)
    raise ValueError(f"unsupported truncation_mode {mode!r}; expected 'keep_start' or 'keep_end'")


def prepare_dataset(
    dataset: AnyDataset,
    tokenizer: Any,
    args: Any,
    weights: RoleWeights,
    packing: bool,
    name: str,
    dropped: dict[str, dict[str, int | None]] | None = None,
) -> AnyDataset:
    """The SFTTrainer dataset pipeline, with ``wit_roles`` carried through every step (``args``: a WITConfig).
    With ``wit_drop_unrendered``, what was dropped from the rows it tags goes into ``dropped[name]``
    (:func:`count_dropped`), for the run record."""
    if isinstance(dataset, Dataset) and dataset.format["type"] == "custom":
        raise ValueError("datasets with a with_transform() cannot be prepared; materialise the transform with map()")
    trained = np.asarray(weights.table()) > 0
    with PartialState().main_process_first():
        columns: Sequence[str] = get_dataset_column_names(dataset)
        if "input_ids" not in columns:
            dataset = tag_dataset(
                dataset,
                tokenizer,
                args.dataset_text_field,
                args.dataset_num_proc,
                name,
                drop_unrendered=args.wit_drop_unrendered,
                weight_field=args.wit_message_weight_field,
            )
            warn_unused_weight_field(dataset, args.wit_message_weight_field, name)
            if args.wit_drop_unrendered:
                counts = count_dropped(dataset, name)
                if dropped is not None:
                    dropped[name] = counts
        elif ROLES_KEY not in columns:
            raise ValueError(
                f"the {name} dataset is tokenised but has no '{ROLES_KEY}' column: pass raw rows, or tokenise them "
                "with wit_plugin.tagging.RoleTagger"
            )
        dataset = dataset.select_columns([column for column in TOKEN_COLUMNS if column in columns_of(dataset)])
        if args.max_length is not None and not packing:  # packing truncates (bfd) or splits (bfd_split) itself
            cut = truncation_slice(args.truncation_mode, args.max_length)
            kwargs = _map_kwargs(dataset, args.dataset_num_proc, f"Truncating {name} dataset")
            dataset = dataset.map(_truncate, fn_kwargs={"cut": cut}, **kwargs)
        if isinstance(dataset, Dataset) and PartialState().is_main_process:
            audit_turn_ends(dataset_roles(dataset, ROLES_KEY)).warn(name)
        kwargs = _map_kwargs(dataset, args.dataset_num_proc, f"Dropping {name} rows without weighted tokens")
        dataset = dataset.filter(_has_target, fn_kwargs={"trained": trained}, **kwargs)
        if packing:
            if args.max_length is None:
                raise ValueError("packing needs max_length")
            if args.shuffle_dataset:  # shuffle before packing too, as TRL does, so packed rows mix sources
                dataset = dataset.shuffle(seed=args.seed)
            if has_message_weights(dataset):
                kwargs = _map_kwargs(dataset, args.dataset_num_proc, f"Filling {name} message weights for packing")
                dataset = dataset.map(_full_weights, **kwargs)
            elif MESSAGE_WEIGHTS_KEY in columns_of(dataset):
                dataset = dataset.remove_columns(MESSAGE_WEIGHTS_KEY)
            kwargs = _map_kwargs(dataset, args.dataset_num_proc, f"Packing {name} dataset")
            dataset = pack_dataset(dataset, args.max_length, args.packing_strategy, kwargs)
            kwargs = _map_kwargs(dataset, args.dataset_num_proc, f"Marking sequence starts in {name} dataset")
            dataset = dataset.map(_mark_sequence_starts, **kwargs)
    if args.shuffle_dataset:
        dataset = dataset.shuffle(seed=args.seed)
    return dataset
