"""The weighted loss: the formula by hand, stock equivalence, packing invariance, empty batches."""

from __future__ import annotations

import math

import pytest
import torch

from wit_plugin.loss.weighted import weighted_token_loss
from wit_plugin.roles import Role, RoleWeights
from wit_plugin.tagging import RoleTagger
from wit_plugin.training.collation import RoleCollator

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Name a primary colour, in one word."},
            {"role": "assistant", "content": "Blue."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    },
    {"messages": [{"role": "user", "content": "Spell cat backwards."}, {"role": "assistant", "content": "tac"}]},
]


def hand_loss(logits, input_ids, roles, weights: RoleWeights, n=None) -> float:
    """The WIT formula, one token at a time in float64."""
    table = [*weights.as_tuple(), 0.0]
    total, count = 0.0, 0
    for b in range(input_ids.shape[0]):
        for t in range(1, input_ids.shape[1]):
            role = int(roles[b, t])
            if role == Role.PAD:
                continue
            log_probs = torch.log_softmax(logits[b, t - 1].double(), dim=-1)
            total += table[role] * -log_probs[int(input_ids[b, t])].item()
            count += table[role] > 0
    return total / (n if n is not None else count)


def test_matches_the_formula_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 13)
    input_ids = torch.randint(0, 13, (3, 9))
    roles = torch.randint(0, len(Role), (3, 9), dtype=torch.int8)
    weights = RoleWeights(0.1, 0.2, 0.0, 0.6, 0.9)
    result = weighted_token_loss(logits, input_ids, roles, weights.table())
    assert result.loss.item() == pytest.approx(hand_loss(logits, input_ids, roles, weights), rel=1e-6)
    global_n = 40  # e.g. counted over all micro-batches and ranks
    result = weighted_token_loss(logits, input_ids, roles, weights.table(), num_items_in_batch=torch.tensor(global_n))
    assert result.loss.item() == pytest.approx(hand_loss(logits, input_ids, roles, weights, global_n), rel=1e-6)
    scored = roles[:, 1:] != Role.PAD
    assert result.stats.tokens[: Role.PAD].sum() == scored.sum()
    assert result.stats.tokens[Role.PAD] == 0


def test_a_batch_without_weighted_tokens_gives_zero_and_zero_gradients():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    roles = torch.full((2, 5), Role.INSTRUCTION, dtype=torch.int8)
    result = weighted_token_loss(logits, torch.zeros(2, 5, dtype=torch.long), roles, RoleWeights.preset("it").table())
    assert result.loss.item() == 0.0
    result.loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()
    everything_pad = torch.full((2, 5), Role.PAD, dtype=torch.int8)
    empty = weighted_token_loss(logits, torch.zeros(2, 5, dtype=torch.long), everything_pad, RoleWeights().table(), 0)
    assert empty.loss.item() == 0.0 and not math.isnan(empty.loss.item())


@pytest.fixture(scope="module")
def tagged(tokenizer):
    tagger = RoleTagger(tokenizer, "chat")
    return [tagger.tag(row).as_features() for row in ROWS]


def test_it_preset_equals_axolotls_stock_chat_template_loss(tokenizer, model, tagged):
    pytest.importorskip("axolotl")
    from axolotl.prompt_strategies.chat_template import load
    from axolotl.utils.collators import DataCollatorForSeq2Seq
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault({"sequence_len": 512, "train_on_inputs": False, "chat_template": "tokenizer_default"})
    stock = load(tokenizer, cfg, {"type": "chat_template", "roles_to_train": ["assistant"], "train_on_eos": "turn"})
    stock_rows = [stock.tokenize_prompt(row) for row in ROWS]
    for ours, theirs in zip(tagged, stock_rows):
        assert ours["input_ids"] == theirs["input_ids"]  # same tokens ...
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    stock_batch = collator([{k: theirs[k] for k in ("input_ids", "attention_mask", "labels")} for theirs in stock_rows])
    our_batch = RoleCollator(collator, RoleWeights.preset("it"))([dict(f) for f in tagged])
    assert torch.equal(our_batch["labels"], stock_batch["labels"])  # ... and the same trained tokens
    with torch.no_grad():
        stock_loss = model(**stock_batch).loss
        logits = model(input_ids=our_batch["input_ids"], attention_mask=our_batch["attention_mask"]).logits
    ours = weighted_token_loss(logits, our_batch["input_ids"], our_batch["wit_roles"], RoleWeights.preset("it").table())
    torch.testing.assert_close(ours.loss, stock_loss, rtol=1e-6, atol=0)


def test_packed_equals_unpacked(model, tagged):
    weights = RoleWeights.preset("wit").table()
    per_sample = []
    with torch.no_grad():
        for features in tagged:
            ids = torch.tensor([features["input_ids"]])
            roles = torch.tensor([[Role.PAD, *features["wit_roles"][1:]]], dtype=torch.int8)
            logits = model(input_ids=ids, use_cache=False).logits
            per_sample.append(weighted_token_loss(logits, ids, roles, weights, num_items_in_batch=1))
        ids = torch.tensor([[t for f in tagged for t in f["input_ids"]]])
        roles = torch.tensor([[r for f in tagged for r in [Role.PAD, *f["wit_roles"][1:]]]], dtype=torch.int8)
        positions = torch.tensor([[p for f in tagged for p in range(len(f["input_ids"]))]])
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        packed = weighted_token_loss(logits, ids, roles, weights, num_items_in_batch=1)
    torch.testing.assert_close(packed.loss, sum(r.loss for r in per_sample), rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(packed.stats.loss_sum, sum(r.stats.loss_sum for r in per_sample), rtol=2e-5, atol=1e-4)
    assert torch.equal(packed.stats.tokens, sum(r.stats.tokens for r in per_sample))
