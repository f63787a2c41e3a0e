"""Role codes through any collator: padding, multipack concatenation, padding-free flattening.

Axolotl's and TRL's collators know nothing of ``wit_roles``: some pass it through unpadded, some drop it.
:class:`RoleCollator` takes the column out, lets the wrapped collator build the batch, then lays the roles
out exactly as the collator laid out ``input_ids`` (samples concatenated per packed row, or all in one row
when the collator flattens, padded on either side) and *checks* that layout against the collator's ``input_ids``: a collator we do not
understand fails loudly instead of training on misaligned weights.

It also writes ``labels = input_ids`` where the weight is non-zero at some step of the run and ``-100`` elsewhere
(the loss's N is the trainer's own count: :mod:`wit_plugin.training.mixin`), and marks the first token
of every sequence ``PAD`` (never a target: in a packed row it would be predicted across a boundary). The other
column the prepared datasets carry, ``wit_dropped`` (:mod:`wit_plugin.tagging.dropped`), is taken out of every
batch: Axolotl keeps unknown columns under sample packing, and the model must not see it.

Multipliers from the data (``wit_message_weights``, a message's weight: :mod:`wit_plugin.tagging.weights`) are laid
out exactly as the roles, 1 where a sample has none (an empty list, or no column) and on padding; the batch carries
them (float32 ``[B, T]``) only when some sample has any, and a label is masked where the role's weight or the
multiplier is 0, so ``num_items_in_batch`` stays the count of tokens whose final weight is > 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from wit_plugin.roles import IGNORE_INDEX, MESSAGE_WEIGHTS_KEY, ROLES_KEY, Role, RoleWeights
from wit_plugin.tagging.dropped import DROPPED_KEY

ROLE_DTYPE = torch.int8


class CollationError(ValueError):
    """The batch's roles cannot be aligned with its tokens."""


def _packed_rows(features: Sequence[Any], output_rows: int) -> list[list[Mapping[str, Any]]]:
    """The samples that make up each of the collator's ``output_rows`` rows, in order."""
    if isinstance(features[0], list):  # multipack: one list of samples per packed row
        return [list(pack) for pack in features]
    if output_rows == 1:  # padding-free flattening (or a batch of one): every sample in the one row
        return [list(features)]
    return [[sample] for sample in features]


_WIT_COLUMNS = (ROLES_KEY, DROPPED_KEY, MESSAGE_WEIGHTS_KEY)


def _without_roles(features: Sequence[Any]) -> list[Any]:
    def strip(sample: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in sample.items() if key not in _WIT_COLUMNS}

    return [[strip(s) for s in item] if isinstance(item, list) else strip(item) for item in features]


def _row_layout(samples: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Concatenated ids, roles and multipliers (None if no sample has any) of one output row, each sample's first
    token marked PAD."""
    ids, roles, multipliers = [], [], []
    for index, sample in enumerate(samples):
        if ROLES_KEY not in sample:
            raise CollationError(
                f"a sample has no '{ROLES_KEY}' column (fields: {sorted(sample)}): the dataset was not "
                "tokenised by a wit_plugin strategy"
            )
        sample_ids = np.asarray(sample["input_ids"], dtype=np.int64)
        sample_roles = np.asarray(sample[ROLES_KEY], dtype=np.int8).copy()
        if len(sample_ids) != len(sample_roles):
            raise CollationError(f"sample {index} has {len(sample_ids)} tokens but {len(sample_roles)} roles")
        if len(sample_roles):
            sample_roles[0] = Role.PAD
        ids.append(sample_ids)
        roles.append(sample_roles)
        sample_weights = sample.get(MESSAGE_WEIGHTS_KEY)
        if sample_weights is not None and len(sample_weights):
            if len(sample_weights) != len(sample_ids):
                raise CollationError(
                    f"sample {index} has {len(sample_ids)} tokens but {len(sample_weights)} message weights"
                )
            multipliers.append(np.asarray(sample_weights, dtype=np.float32))
        else:
            multipliers.append(None)
    if all(multiplier is None for multiplier in multipliers):
        return np.concatenate(ids), np.concatenate(roles), None
    filled = [np.ones(len(i), np.float32) if m is None else m for i, m in zip(ids, multipliers)]
    return np.concatenate(ids), np.concatenate(roles), np.concatenate(filled)


def layout_roles(
    rows: list[list[Mapping[str, Any]]], input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Roles shaped like ``input_ids``, and the multipliers laid out alike (None when no sample has any); raises
    :class:`CollationError` unless the ids match the layout."""
    if input_ids.dim() != 2 or input_ids.shape[0] != len(rows):
        raise CollationError(f"collator returned input_ids of shape {tuple(input_ids.shape)} for {len(rows)} rows")
    width = input_ids.shape[1]
    roles = torch.full(input_ids.shape, Role.PAD, dtype=ROLE_DTYPE)
    multipliers: torch.Tensor | None = None
    batch_ids = input_ids.cpu().numpy()
    for row_index, samples in enumerate(rows):
        ids, row_roles, row_weights = _row_layout(samples)
        if len(ids) > width:
            raise CollationError(f"row {row_index} has {len(ids)} tokens but the batch is {width} wide")
        for start in dict.fromkeys((0, width - len(ids))):  # right padding, else left padding
            if np.array_equal(batch_ids[row_index, start : start + len(ids)], ids):
                roles[row_index, start : start + len(ids)] = torch.from_numpy(row_roles)
                if row_weights is not None:
                    if multipliers is None:
                        multipliers = torch.ones(input_ids.shape, dtype=torch.float32)
                    multipliers[row_index, start : start + len(ids)] = torch.from_numpy(row_weights)
                break
        else:
            raise CollationError(
                f"row {row_index}: the collator's input_ids are not the samples' tokens concatenated and "
                "padded; wit_plugin cannot align roles with this collator"
            )
    return roles, multipliers


def mask_labels(
    input_ids: torch.Tensor, roles: torch.Tensor, weights: RoleWeights, multipliers: torch.Tensor | None = None
) -> torch.Tensor:
    """Labels for trainers: the token where its weight (role weight × multiplier) is non-zero, ``-100`` elsewhere
    (``weights``: each role's largest weight over the run, :attr:`~wit_plugin.roles.RoleSchedules.ever`)."""
    weighted = weights.table()[roles.long()] > 0
    if multipliers is not None:
        weighted &= multipliers > 0
    return torch.where(weighted, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


class RoleCollator:
    """Wraps a collator so its batches carry ``wit_roles`` aligned with ``input_ids`` and masked labels."""

    def __init__(self, collator: Callable[..., Any], weights: RoleWeights) -> None:
        self.collator = collator
        self.weights = weights

    def __getattr__(self, name: str) -> Any:  # trainers read e.g. .tokenizer off their collator
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, features: Sequence[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not features:
            raise CollationError("empty batch")
        batch = self.collator(_without_roles(features), *args, **kwargs)
        input_ids = batch["input_ids"]
        roles, multipliers = layout_roles(_packed_rows(features, input_ids.shape[0]), input_ids)
        batch[ROLES_KEY] = roles
        if multipliers is not None:
            batch[MESSAGE_WEIGHTS_KEY] = multipliers
        batch["labels"] = mask_labels(input_ids, roles, self.weights, multipliers)
        return batch
