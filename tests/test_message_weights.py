"""Per-message weights from the data (issue #18 §1): tagging, collation, the losses, TRL and Axolotl rows.

References are independent of the code under test: a turn's characters are found by string search in the
rendering (ChatML: turn k ends just after the k-th ``<|im_end|>``), the loss is recomputed in float64 by hand.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset

from wit_plugin.loss.linear_ce import weighted_linear_cross_entropy
from wit_plugin.loss.weighted import weighted_token_loss
from wit_plugin.roles import IGNORE_INDEX, MESSAGE_WEIGHTS_KEY, ROLES_KEY, Role, RoleWeights
from wit_plugin.tagging import RoleTagger, TaggingError
from wit_plugin.training.collation import RoleCollator

CLOSING = "<|im_end|>"
WEIGHTED = {
    "messages": [
        {"role": "system", "content": "Be brief.", "weight": 0.5},
        {"role": "user", "content": "What is 2 + 3?", "weight": 2.0},
        {"role": "assistant", "content": "5, of course.", "weight": 0.3},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "Eight.", "weight": 0},
        {"role": "user", "content": "Thanks. And 1 + 1?"},
        {"role": "assistant", "content": "Two."},
    ]
}


def message_weights(row: dict[str, Any], key: str = "weight") -> list[float]:
    return [float(m.get(key, 1.0)) for m in row["messages"]]


def reference_multipliers(tokenizer: Any, text: str, weights: list[float]) -> tuple[list[int], np.ndarray]:
    """The tokens of ``text`` (tokenised afresh) and, per token, the weight of the ChatML turn holding its first
    character: turn k runs from the end of the (k-1)-th ``<|im_end|>`` to the end of the k-th; after the last, 1."""
    ends = [match.end() for match in re.finditer(re.escape(CLOSING), text)]
    assert len(ends) == len(weights), "one end of turn per message"
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    multipliers = [
        next((weights[k] for k, end in enumerate(ends) if start < end), 1.0) for start, _ in encoding["offset_mapping"]
    ]
    return encoding["input_ids"], np.asarray(multipliers, dtype=np.float32)


# --- tagging --------------------------------------------------------------------------------------------------


def test_a_message_weight_covers_its_whole_turn_and_nothing_else(tokenizer):
    tagged = RoleTagger(tokenizer, "chat").tag(WEIGHTED)
    ids, expected = reference_multipliers(tokenizer, tagged.text, message_weights(WEIGHTED))
    assert tagged.input_ids == ids
    np.testing.assert_array_equal(tagged.token_multipliers(), expected)
    eot = [k for k, role in enumerate(tagged.roles) if role == Role.EOT]
    assert [float(tagged.message_weights[k]) for k in eot] == pytest.approx([0.3, 0.0, 1.0])  # ends of turn too


@pytest.mark.parametrize("weights", [{}, {1: 1.0, 2: 1}])
def test_rows_without_weights_other_than_1_carry_an_empty_column(tokenizer, weights):
    row = copy.deepcopy(WEIGHTED)
    for index, message in enumerate(row["messages"]):
        message.pop("weight", None)
        if index in weights:
            message["weight"] = weights[index]
    tagged = RoleTagger(tokenizer, "chat").tag(row)
    assert len(tagged.message_weights) == 0 and tagged.as_features()[MESSAGE_WEIGHTS_KEY].dtype == np.float32
    assert (tagged.token_multipliers() == 1).all()


@pytest.mark.parametrize("key", ["loss_weight", "loss_scale", "loss"])
def test_another_weight_key_is_read_when_named(tokenizer, key):
    row = {
        "messages": [{**m, key: m.pop("weight")} if "weight" in m else m for m in copy.deepcopy(WEIGHTED)["messages"]]
    }
    named = RoleTagger(tokenizer, "chat", weight_field=key).tag(row)
    np.testing.assert_array_equal(named.message_weights, RoleTagger(tokenizer, "chat").tag(WEIGHTED).message_weights)
    assert f"messages[0].{key}" in RoleTagger(tokenizer, "chat").tag(row).unread  # not named: read by nothing


def test_axolotl_training_false_and_training_detail_are_weights_0_and_1(tokenizer):
    content = "Blue, like the sky."
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour.", "training": False},
            {
                "role": "assistant",
                "content": content,
                "weight": 0.5,
                # "Blue" and " sky" trained, the rest of the content not (as Axolotl: only the spans marked train)
                "training_detail": [
                    {"begin_offset": 0, "end_offset": 3, "train": True},
                    {"begin_offset": 14, "end_offset": 17, "train": True},
                ],
            },
        ]
    }
    tagged = RoleTagger(tokenizer, "chat").tag(row)
    _, turns = reference_multipliers(tokenizer, tagged.text, [1.0, 0.0, 0.5])
    start = tagged.text.index(content)
    trained = {*range(start, start + 4), *range(start + 14, start + 18)}
    expected = turns.copy()
    for index, (first, last) in enumerate(tagged.offsets.tolist()):
        if start <= first < start + len(content):  # a content token: 0.5 if every character is trained, else 0
            expected[index] = 0.5 if set(range(first, last)) <= trained else 0.0
    np.testing.assert_array_equal(tagged.token_multipliers(), expected)
    texts = tagged.token_texts()
    assert {texts[k] for k in np.flatnonzero(tagged.message_weights == 0.5)} >= {"Blue", " sky", CLOSING}
    renamed = {"messages": [{("keep" if k == "training" else k): v for k, v in m.items()} for m in row["messages"]]}
    other = RoleTagger(tokenizer, "chat", training_field="keep").tag(renamed)  # Axolotl's message_field_training
    np.testing.assert_array_equal(other.message_weights, tagged.message_weights)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"weight": -1}, r"messages\[1\]\.weight must be >= 0, got -1"),
        ({"weight": math.nan}, r"messages\[1\]\.weight must be finite, got nan"),
        ({"weight": math.inf}, r"messages\[1\]\.weight must be finite, got inf"),
        ({"weight": True}, r"messages\[1\]\.weight must be a number, got True"),
        ({"weight": "0.5"}, r"messages\[1\]\.weight must be a number, got '0.5'"),
        ({"training": "no"}, r"messages\[1\]\.training must be true or false, got 'no'"),
        ({"training_detail": [{"begin_offset": 0, "end_offset": 99, "train": True}]}, r"training_detail\[0\]: offsets"),
        ({"training_detail": [{"begin_offset": 0, "end_offset": 1, "train": 1}]}, r"training_detail\[0\]\.train must"),
        (
            {"training_detail": [{"begin_offset": False, "end_offset": 1, "train": True}]},
            r"begin_offset must be an int",
        ),
    ],
)
def test_bad_weights_are_refused_naming_the_message_and_key(tokenizer, message, error):
    row = copy.deepcopy(WEIGHTED)
    row["messages"][1] = {"role": "user", "content": "What is 2 + 3?", **message}
    with pytest.raises(TaggingError, match=error):
        RoleTagger(tokenizer, "chat").tag(row)


def test_a_weight_on_a_message_the_template_does_not_render_is_refused(tokenizer):
    drops_system = (
        "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    )
    row = {"messages": [{"role": "system", "content": "", "weight": 0.5}, *WEIGHTED["messages"][1:3]]}
    with pytest.raises(TaggingError, match=r"messages\[0\]\.weight: the chat template does not render this message"):
        RoleTagger(tokenizer, "chat", chat_template=drops_system).tag(row)
    row["messages"][0]["weight"] = 1  # no weight other than 1: nothing is lost
    assert RoleTagger(tokenizer, "chat", chat_template=drops_system).tag(row).input_ids


@pytest.mark.parametrize(
    ("row_format", "row"),
    [
        ("alpaca", {"instruction": "Add 2 and 3.", "input": "", "output": "5"}),
        ("prompt_completion", {"prompt": "2 + 3 =", "completion": " 5"}),
        ("text", {"text": "A whole document."}),
    ],
)
def test_a_plain_row_weight_multiplies_every_token_of_the_row(tokenizer, row_format, row):
    tagged = RoleTagger(tokenizer, row_format).tag({**row, "weight": 0.25})
    assert len(tagged.message_weights) == len(tagged.input_ids)
    assert (tagged.message_weights == np.float32(0.25)).all()
    assert len(RoleTagger(tokenizer, row_format).tag(row).message_weights) == 0
    with pytest.raises(TaggingError, match=rf"{row_format} row field 'w' must be >= 0, got -2"):
        RoleTagger(tokenizer, row_format, weight_field="w").tag({**row, "w": -2})


# --- the loss -------------------------------------------------------------------------------------------------

V, H = 37, 16
TABLE = RoleWeights(template=0.0, system=0.2, instruction=0.4, response=1.0, eot=0.7, reasoning=1.3).table()


def random_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (3, 11)
    roles = torch.randint(0, len(Role) - 1, shape, generator=gen)
    roles[:, 0] = Role.PAD
    roles[2, 8:] = Role.PAD  # padding
    choices = torch.tensor([0.0, 0.3, 1.0, 2.5])
    return {
        "input_ids": torch.randint(0, V, shape, generator=gen),
        "roles": roles.to(torch.int8),
        "message_weights": choices[torch.randint(0, len(choices), shape, generator=gen)],
        "hidden": torch.randn(*shape, H, generator=gen),
        "head": torch.randn(V, H, generator=gen) / H**0.5,
    }


def hand_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_t w(role)·m_t·CE_t / #(targets with w·m > 0) in float64, target t = token t+1."""
    logits = (batch["hidden"].double() @ batch["head"].double().T)[:, :-1]
    log_probs = logits - logits.logsumexp(-1, keepdim=True)
    targets = batch["input_ids"][:, 1:]
    ce = -log_probs.gather(-1, targets[..., None])[..., 0]
    roles = batch["roles"][:, 1:].long()
    weights = TABLE.double()[roles] * batch["message_weights"][:, 1:].double() * (roles != Role.PAD)
    return (weights * ce).sum() / (weights > 0).sum()


def both_losses(batch: dict[str, torch.Tensor], message_weights: torch.Tensor | None) -> list[torch.Tensor]:
    args = (batch["input_ids"], batch["roles"], TABLE)
    eager = weighted_token_loss(batch["hidden"] @ batch["head"].T, *args, message_weights=message_weights)
    fused = weighted_linear_cross_entropy(
        batch["hidden"], batch["head"], *args, chunk_rows=7, message_weights=message_weights
    )
    return [eager.loss, fused.loss]


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_with_message_weights_equals_a_float64_hand_computation(seed):
    batch = random_batch(seed)
    for loss in both_losses(batch, batch["message_weights"]):
        torch.testing.assert_close(loss.double(), hand_loss(batch), rtol=1e-5, atol=0)


def test_all_ones_weights_are_exactly_no_weights_and_a_zero_weight_is_a_masked_token():
    batch = random_batch()
    for ones, none in zip(both_losses(batch, torch.ones(3, 11)), both_losses(batch, None)):
        assert torch.equal(ones, none)
    zero = batch["message_weights"] == 0
    masked = {**batch, "roles": batch["roles"].masked_fill(zero, int(Role.PAD))}
    only_zeros = torch.where(zero, 0.0, 1.0)
    for weighted, pad in zip(both_losses(batch, only_zeros), both_losses(masked, None)):
        torch.testing.assert_close(weighted, pad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("include_zero_weight", [True, False])
def test_eager_and_fused_report_the_same_role_stats_with_message_masked_tokens(include_zero_weight):
    """``wit_role_metrics: weighted`` reports the trained tokens only: a trained role's tokens masked by a message
    weight of 0 are left out by both implementations alike, ``all`` keeps every scored token in both."""
    batch = random_batch()
    args = (batch["input_ids"], batch["roles"], TABLE)
    flags = {"message_weights": batch["message_weights"], "include_zero_weight": include_zero_weight}
    eager = weighted_token_loss(batch["hidden"] @ batch["head"].T, *args, **flags).stats
    fused = weighted_linear_cross_entropy(batch["hidden"], batch["head"], *args, chunk_rows=7, **flags).stats
    roles = batch["roles"][:, 1:].long()
    final = TABLE[roles] * batch["message_weights"][:, 1:]
    reported = roles != Role.PAD if include_zero_weight else final > 0
    expected = torch.bincount(roles[reported], minlength=len(Role))
    assert torch.equal(eager.tokens, expected) and torch.equal(fused.tokens, expected)
    masked = (roles != Role.PAD) & (TABLE[roles] > 0) & (batch["message_weights"][:, 1:] == 0)
    assert masked.any()  # the case at stake: trained roles' tokens masked by their message
    torch.testing.assert_close(fused.loss_sum, eager.loss_sum, rtol=1e-5, atol=1e-4)


# --- collation ------------------------------------------------------------------------------------------------

axolotl_collators = pytest.importorskip("axolotl.utils.collators")


@pytest.fixture(scope="module")
def samples(tokenizer) -> list[dict[str, Any]]:
    tagger = RoleTagger(tokenizer, "chat")
    plain = copy.deepcopy(WEIGHTED)
    for message in plain["messages"]:
        message.pop("weight", None)
    out = []
    for row in (WEIGHTED, plain, WEIGHTED):
        features = tagger.tag(row).as_features()
        features["position_ids"] = list(range(len(features["input_ids"])))
        out.append(features)
    del out[2][MESSAGE_WEIGHTS_KEY]  # an old prepared dataset's row: no column at all
    return out


def sample_multipliers(sample: dict[str, Any]) -> np.ndarray:
    weights = sample.get(MESSAGE_WEIGHTS_KEY)
    return np.ones(len(sample["input_ids"])) if weights is None or not len(weights) else np.asarray(weights)


@pytest.mark.parametrize("packed", [False, True])
def test_collation_lays_weights_out_as_roles_and_masks_labels_where_the_final_weight_is_0(tokenizer, samples, packed):
    weights = RoleWeights.groups(0.4, 1.0)
    if packed:  # Axolotl's multipack: one list of samples per packed row
        inner = axolotl_collators.V2BatchSamplerDataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=64)
        features, rows = [copy.deepcopy(samples[:2]), copy.deepcopy(samples[2:])], [[0, 1], [2]]
    else:
        inner = axolotl_collators.DataCollatorForSeq2Seq(tokenizer, padding=True)
        features, rows = copy.deepcopy(samples), [[0], [1], [2]]
    batch = RoleCollator(inner, weights)(features)
    multipliers = batch[MESSAGE_WEIGHTS_KEY]
    assert multipliers.dtype == torch.float32 and multipliers.shape == batch["input_ids"].shape
    for row, members in enumerate(rows):
        expected = np.concatenate([sample_multipliers(samples[k]) for k in members])
        assert multipliers[row, : len(expected)].tolist() == pytest.approx(expected.tolist())
        assert (multipliers[row, len(expected) :] == 1).all()  # padding
    final = weights.table()[batch[ROLES_KEY].long()] * multipliers
    assert torch.equal(batch["labels"] != IGNORE_INDEX, final > 0)
    plain = [[samples[1]]] if packed else [samples[1]]
    assert MESSAGE_WEIGHTS_KEY not in RoleCollator(inner, weights)(copy.deepcopy(plain))  # no weights: no key


# --- TRL, end to end ------------------------------------------------------------------------------------------

WEIGHTED_CHAT = [
    WEIGHTED,
    {
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Translate the word cat, please.", "weight": 0},
            {"role": "assistant", "content": "chat", "weight": 1.5},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Which colour is a clear daytime sky?"},
            {"role": "assistant", "content": "Blue."},
        ]
    },
]
WIT = {"wit_prompt_weight": 0.4, "wit_response_weight": 0.6}


def trl_hand_loss(model: Any, tokenizer: Any, rows: list[dict], weights: RoleWeights) -> torch.Tensor:
    """Σ w(role)·m·CE / #(w·m > 0) over every row run alone, float64; m from :func:`reference_multipliers`."""
    table = weights.table().double()
    total = count = 0
    for row in rows:
        tagged = RoleTagger(tokenizer).tag(row)
        ids, multipliers = reference_multipliers(tokenizer, tagged.text, message_weights(row))
        ids = torch.tensor(ids)
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0].double()
        ce = -(logits - logits.logsumexp(-1, keepdim=True))[:-1].gather(-1, ids[1:, None])[:, 0]
        final = table[torch.tensor(tagged.roles[1:])] * torch.from_numpy(multipliers[1:]).double()
        total, count = total + (final * ce).sum(), count + (final > 0).sum()
    return total / count


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        ("padded", {}),
        ("bfd packing", {"packing": True, "max_length": 256}),
        ("padding-free", {"padding_free": True, "max_length": None}),
    ],
)
@pytest.mark.parametrize("loss_impl", ["eager", "chunked"])
def test_trl_loss_with_message_weights_equals_hand_computation(tmp_path, model, tokenizer, layout, options, loss_impl):
    from wit_plugin import WITConfig, WITSFTTrainer

    args = WITConfig(
        output_dir=str(tmp_path),
        report_to="none",
        save_strategy="no",
        bf16=False,
        wit_loss_impl=loss_impl,
        **{"max_length": 256, **WIT, **options},
    )
    trainer = WITSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(copy.deepcopy(WEIGHTED_CHAT)),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator(list(trainer.train_dataset))
    assert MESSAGE_WEIGHTS_KEY in batch
    model.train()  # the fused loss runs in training mode only
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(model, batch)
    finally:
        model.eval()
    expected = trl_hand_loss(model, tokenizer, WEIGHTED_CHAT, args.role_weights)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=0)


def test_trl_names_the_row_of_a_bad_weight_and_warns_once_about_a_key_no_row_carries(tmp_path, tokenizer, caplog):
    from wit_plugin import WITConfig
    from wit_plugin.integrations.trl.data import prepare_dataset

    args = WITConfig(output_dir=str(tmp_path), report_to="none", save_strategy="no", bf16=False, max_length=128)
    rows = copy.deepcopy(WEIGHTED_CHAT)
    rows[2]["messages"][2]["weight"] = -0.5
    with pytest.raises(TaggingError, match=r"train dataset, row 2: messages\[2\]\.weight must be >= 0, got -0.5"):
        prepare_dataset(Dataset.from_list(rows), tokenizer, args, RoleWeights(), False, "train")
    args.wit_message_weight_field = "loss_weight"
    with caplog.at_level(logging.WARNING, logger="wit_plugin"):
        prepare_dataset(Dataset.from_list(copy.deepcopy(WEIGHTED_CHAT)), tokenizer, args, RoleWeights(), False, "train")
    warnings = [r.getMessage() for r in caplog.records if "wit_message_weight_field='loss_weight'" in r.getMessage()]
    assert len(warnings) == 1 and "train dataset" in warnings[0]


# --- Axolotl datasets -----------------------------------------------------------------------------------------


def test_axolotl_chat_template_rows_with_weight_and_training_detail(tokenizer, monkeypatch, tmp_path):
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault

    from wit_plugin.integrations.axolotl.dataset_types import map_dataset_types
    from wit_plugin.integrations.axolotl.plugin import WITPlugin
    from wit_plugin.integrations.axolotl.strategies import chat_template as chat_strategy

    monkeypatch.setattr(PluginManager.get_instance(), "plugins", {"wit_plugin.WITPlugin": WITPlugin()})
    cfg = DictDefault({"sequence_len": 256, "chat_template": "tokenizer_default", "wit_message_weight_field": "w"})
    entries = {
        "datasets": [
            {"path": "a", "type": "chat_template", "wit_message_weight_field": "loss_weight"},
            {"path": "b", "type": "chat_template", "message_field_training_detail": "spans"},
        ]
    }
    map_dataset_types(entries)
    by_dataset = entries["datasets"][0]
    assert by_dataset["message_property_mappings"] == {"weight": "loss_weight"}  # kept by Axolotl's schema
    row = {
        "messages": [
            {**m, "loss_weight": m.pop("weight")} if "weight" in m else m for m in copy.deepcopy(WEIGHTED)["messages"]
        ]
    }
    features = chat_strategy.load(tokenizer, cfg, by_dataset).tokenize_prompt(row)
    _, expected = reference_multipliers(tokenizer, tokenizer.decode(features["input_ids"]), message_weights(WEIGHTED))
    np.testing.assert_array_equal(features[MESSAGE_WEIGHTS_KEY], expected)
    detail = {
        "messages": [
            {"role": "user", "content": "Name a colour.", "w": 0},  # the config's key
            {
                "role": "assistant",
                "content": "Blue sky",
                "spans": [{"begin_offset": 0, "end_offset": 3, "train": True}],
            },
        ]
    }
    strategy = chat_strategy.load(tokenizer, cfg, entries["datasets"][1])
    features = strategy.tokenize_prompt(detail)
    texts = [tokenizer.decode([token]) for token in features["input_ids"]]
    trained = [text for text, weight in zip(texts, features[MESSAGE_WEIGHTS_KEY]) if weight > 0]
    assert "Blue" in trained and " sky" not in trained and CLOSING in trained and "Name" not in trained
    bad = copy.deepcopy(detail)
    bad["messages"][1]["spans"][0]["train"] = "yes"
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(bad) + "\n")
    strategy = chat_strategy.load(tokenizer, cfg, {**entries["datasets"][1], "path": str(data)})
    with pytest.raises(TaggingError, match=rf"^{data}:1: messages\[1\]\.spans\[0\]\.train must be true or false"):
        strategy.tokenize_prompt(bad)


def test_axolotl_warns_once_per_dataset_whose_named_weight_key_no_prepared_row_carries(caplog):
    from wit_plugin.integrations.axolotl.plugin import warn_unused_weight_fields
    from wit_plugin.tagging.dropped import DROPPED_KEY, dropped_column

    cfg = {
        "wit_message_weight_field": "loss",
        "datasets": [{"path": "a"}, {"path": "b"}, {"path": "c", "message_property_mappings": {"weight": "weight"}}],
    }
    weights = [np.zeros(0, np.float32), np.full(3, 0.5, np.float32), np.zeros(0, np.float32)]
    prepared = Dataset.from_dict(
        {MESSAGE_WEIGHTS_KEY: weights, DROPPED_KEY: [dropped_column(index, ()) for index in range(3)]}
    )
    with caplog.at_level(logging.WARNING, logger="wit_plugin"):
        warn_unused_weight_fields(cfg, prepared)
    warned = [r.getMessage() for r in caplog.records if "no row carries" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        "wit: datasets[0]: no row carries a weight other than 1 under 'loss'"
    )
