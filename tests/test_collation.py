"""Role codes through every Axolotl collator path, and TRL/transformers' padding-free flattening."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithFlattening

from wit_plugin.roles import IGNORE_INDEX, Role, RoleWeights
from wit_plugin.tagging import RoleTagger
from wit_plugin.training.collation import CollationError, RoleCollator

axolotl_collators = pytest.importorskip("axolotl.utils.collators")

ROWS = [
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Spell cat backwards, please, letter by letter."},
            {"role": "assistant", "content": "tac"},
        ]
    },
]
WEIGHTS = RoleWeights.groups(0.0, 1.0)  # template/system/instruction 0: labels must be masked there


@pytest.fixture(scope="module")
def samples(tokenizer):
    tagger = RoleTagger(tokenizer, "chat")
    out = []
    for row in ROWS:
        features = tagger.tag(row).as_features()
        features["position_ids"] = list(range(len(features["input_ids"])))
        out.append(features)
    return out


def copies(samples):
    return [{k: list(v) for k, v in s.items()} for s in samples]


def expected_rows(samples, packs):
    """Concatenated ids and roles per output row, with each sample's first token PAD."""
    rows = []
    for pack in packs:
        ids, roles = [], []
        for index in pack:
            ids += samples[index]["input_ids"]
            roles += [Role.PAD] + samples[index]["wit_roles"][1:]
        rows.append((ids, roles))
    return rows


def check_batch(batch, rows, padding_side="right"):
    ids, roles, labels = batch["input_ids"], batch["wit_roles"], batch["labels"]
    assert ids.shape == roles.shape == labels.shape
    table = WEIGHTS.table()
    for row_index, (row_ids, row_roles) in enumerate(rows):
        n = len(row_ids)
        span = slice(0, n) if padding_side == "right" else slice(ids.shape[1] - n, ids.shape[1])
        assert ids[row_index, span].tolist() == row_ids
        assert roles[row_index, span].tolist() == row_roles
        pad = torch.ones(ids.shape[1], dtype=torch.bool)
        pad[span] = False
        assert (roles[row_index, pad] == Role.PAD).all()
        weighted = table[roles[row_index].long()] > 0
        assert (labels[row_index, weighted] == ids[row_index, weighted]).all()
        assert (labels[row_index, ~weighted] == IGNORE_INDEX).all()
    assert (labels != IGNORE_INDEX).sum() == (table[roles.long()] > 0).sum()


@pytest.mark.parametrize("pad_to_multiple_of", [None, 64])  # 64: pad_to_sequence_len
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_no_packing(tokenizer, samples, pad_to_multiple_of, padding_side, monkeypatch):
    monkeypatch.setattr(tokenizer, "padding_side", padding_side)
    inner = axolotl_collators.DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=pad_to_multiple_of)
    batch = RoleCollator(inner, WEIGHTS)(copies(samples))
    check_batch(batch, expected_rows(samples, [[0], [1], [2]]), padding_side)
    if pad_to_multiple_of:
        assert batch["input_ids"].shape[1] == 64


@pytest.mark.parametrize(
    "collator_cls",
    ["V2BatchSamplerDataCollatorForSeq2Seq", "BatchSamplerDataCollatorForSeq2Seq"],  # flash-attn/sdpa multipack
)
def test_multipack(tokenizer, samples, collator_cls):
    inner = getattr(axolotl_collators, collator_cls)(tokenizer, padding=True, pad_to_multiple_of=64)
    packs = [[0, 2], [1]]
    features = [[copies(samples)[i] for i in pack] for pack in packs]
    batch = RoleCollator(inner, WEIGHTS)(features)
    check_batch(batch, expected_rows(samples, packs))
    starts = (batch["position_ids"] == 0) & (batch["wit_roles"] != Role.PAD)
    assert not starts.any()  # packed sequence starts (and padding) are never targets


def test_padding_free_flattening(tokenizer, samples):
    inner = DataCollatorWithFlattening(return_tensors="pt")
    features = [{"input_ids": s["input_ids"], "labels": s["labels"], "wit_roles": s["wit_roles"]} for s in samples]
    batch = RoleCollator(inner, WEIGHTS)(features)
    check_batch(batch, expected_rows(samples, [[0, 1, 2]]))


def test_stock_axolotl_collator_does_not_pad_unknown_columns(tokenizer, samples):
    """Why RoleCollator exists: the stock collator leaves wit_roles ragged, so it cannot even build a tensor."""
    inner = axolotl_collators.DataCollatorForSeq2Seq(tokenizer, padding=True)
    with pytest.raises((ValueError, TypeError)):
        inner(copies(samples))


def test_a_collator_that_reorders_samples_is_caught(tokenizer, samples):
    inner = axolotl_collators.DataCollatorForSeq2Seq(tokenizer, padding=True)

    def reversing(features, *args, **kwargs):
        return inner(list(reversed(features)), *args, **kwargs)

    with pytest.raises(CollationError, match="cannot align roles with this collator"):
        RoleCollator(reversing, WEIGHTS)(copies(samples))


def test_rows_without_roles_are_an_error(tokenizer, samples):
    inner = axolotl_collators.DataCollatorForSeq2Seq(tokenizer, padding=True)
    plain = [{k: v for k, v in s.items() if k != "wit_roles"} for s in copies(samples)]
    with pytest.raises(CollationError, match="not tokenised by a wit_plugin strategy"):
        RoleCollator(inner, WEIGHTS)(plain)
