"""TRL adapter: WITConfig validation, role-carrying dataset preparation, and the loss against stock TRL and a
hand computation, on the real SmolLM2-135M-Instruct (CPU; few short rows so the file stays fast)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer
from trl import SFTConfig, SFTTrainer

from tests.trainer_case import ONE_SGD_STEP
from wit_plugin import WITConfig, WITOptionError, WITSFTMixin, WITSFTTrainer
from wit_plugin.integrations.trl.data import prepare_dataset
from wit_plugin.integrations.trl.trainer import LogitsSFTTrainer
from wit_plugin.options import OPTION_BY_NAME
from wit_plugin.roles import IGNORE_INDEX, ROLES_KEY, Role, RoleWeights, WeightError
from wit_plugin.tagging import RoleTagger

PLAIN = [
    {"prompt": "Question: What is 2 + 3?\nAnswer:", "completion": " 5"},
    {"prompt": "Translate the word 'cat' into French.\n", "completion": "chat"},
    {"prompt": "Name the colour of a clear daytime sky.\n", "completion": "Blue, most of the time."},
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "5"},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Translate the word cat, please."},
            {"role": "assistant", "content": "chat"},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Which colour is a clear daytime sky? One word."},
            {"role": "assistant", "content": "Blue, most of the time."},
            {"role": "user", "content": "And at night?"},
            {"role": "assistant", "content": "Black."},
        ]
    },
]
WIT = {"wit_prompt_weight": 0.4, "wit_response_weight": 0.6}
COMMON = {
    "max_length": 128,
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": "none",
    "save_strategy": "no",
    "disable_tqdm": True,
    "seed": 0,
}


def wit_config(tmp_path: Path, **options: Any) -> WITConfig:
    return WITConfig(output_dir=str(tmp_path), **{**COMMON, **options})


def stock_config(tmp_path: Path, **options: Any) -> SFTConfig:
    # loss_type="nll": TRL 1.9's default "chunked_nll" patches the model's forward (the shared fixture) and
    # computes the same NLL without logits; "nll" gives the model's own loss, the reference to compare with.
    return SFTConfig(output_dir=str(tmp_path), loss_type="nll", **{**COMMON, **options})


def whole_batch(trainer: SFTTrainer) -> dict[str, Any]:
    return trainer.data_collator(list(trainer.train_dataset))


def trained_positions(labels: torch.Tensor) -> set[tuple[int, int]]:
    """(row, position) of every token that is a loss target (position 0 is never one: nothing predicts it)."""
    rows, positions = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)
    return {(int(r), int(p) + 1) for r, p in zip(rows, positions)}


# --- configuration -------------------------------------------------------------------------------------------


def test_config_fields_are_the_weight_keys(tmp_path: Path) -> None:
    wit_fields = {f.name: f.default for f in dataclasses.fields(WITConfig) if f.name.startswith("wit_")}
    assert wit_fields == {name: option.default for name, option in OPTION_BY_NAME.items()}  # one schema
    options = {"wit_preset": "im", "wit_prompt_weight": 0.3, "wit_eot_weight": 2.0}
    assert wit_config(tmp_path, **options).role_weights == RoleWeights.from_options(options)
    assert wit_config(tmp_path).role_weights == RoleWeights.preset("wit")
    assert wit_config(tmp_path).loss_type == "nll"
    (parsed,) = HfArgumentParser(WITConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--wit_preset", "it", "--wit_instruction_weight", "0.25", "--bf16", "False"]
    )
    assert parsed.role_weights == RoleWeights(0.0, 0.0, 0.25, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wit_prompt_weight": -1.0}, "must be >= 0"),
        ({"wit_response_weight": float("nan")}, "must be finite"),
        ({"wit_preset": "sft"}, "unknown wit_preset"),
        ({"wit_preset": "it", "wit_response_weight": 0.0}, "all wit role weights are zero"),
    ],
)
def test_config_rejects_bad_weights(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(WeightError, match=message):
        wit_config(tmp_path, **options)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"loss_type": "dft"}, "loss_type"),
        ({"use_liger_kernel": True}, "use_liger_kernel"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
        ({"assistant_only_loss": True}, "assistant_only_loss"),
        ({"completion_only_loss": True, **WIT}, "completion_only_loss=True"),
        ({"completion_only_loss": False, "wit_preset": "it"}, "completion_only_loss=False"),
        ({"packing": True, "packing_strategy": "wrapped"}, "packing_strategy"),
    ],
)
def test_config_rejects_conflicting_options(tmp_path: Path, options: dict[str, Any], option: str) -> None:
    with pytest.raises(WITOptionError, match=option):
        wit_config(tmp_path, **options)


def test_config_accepts_consistent_masking_options(tmp_path: Path) -> None:
    """TRL's masking switch agreeing with the weights is accepted and kept as given: the config trains exactly the
    roles that switch names (prompt side 0 for completion-only, every role 1 for the whole text)."""
    only_completion = wit_config(tmp_path, completion_only_loss=True, wit_preset="it")
    assert only_completion.completion_only_loss is True
    assert only_completion.wit_preset == "it"
    assert only_completion.role_weights.as_tuple() == (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    whole_text = wit_config(tmp_path, completion_only_loss=False, wit_preset="cpt")
    assert whole_text.completion_only_loss is False
    assert whole_text.wit_preset == "cpt"
    assert whole_text.role_weights.as_tuple() == (1.0,) * 6


def test_chunked_nll_is_refused_or_mapped(tmp_path: Path) -> None:
    """TRL 1.9 computes ``chunked_nll`` without logits (refused); TRL >= 1.16 maps it to ``nll`` itself."""
    try:
        args = wit_config(tmp_path, loss_type="chunked_nll")
    except WITOptionError as error:
        assert "chunked_nll" in str(error)
    else:
        assert args.loss_type == "nll"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"compute_loss_func": lambda *a, **k: 0}, ValueError, "compute_loss_func"),
        ({"formatting_func": lambda row: row["prompt"]}, ValueError, "formatting_func"),
        ({"args": "sft"}, TypeError, "WITConfig"),
        ({"train_dataset": Dataset.from_list([{**CHAT[0], "images": ["x.png"]}])}, ValueError, "'images'"),
        ({"train_dataset": Dataset.from_list([{"input_ids": [1, 2, 3]}])}, ValueError, ROLES_KEY),
        ({"args": "edited"}, WITOptionError, "loss_type"),
        (  # a row the tagger refuses is named by dataset and row
            {"train_dataset": Dataset.from_list([CHAT[0], {"messages": [{"role": "bot", "content": "x"}]}])},
            ValueError,
            "train dataset, row 1: messages\\[0\\].role: unknown message role 'bot'",
        ),
    ],
)
def test_trainer_rejects_bad_input(
    tmp_path: Path, model: Any, tokenizer: Any, kwargs: dict[str, Any], error: type, message: str
) -> None:
    kwargs = {"args": wit_config(tmp_path), "train_dataset": Dataset.from_list(PLAIN), **kwargs}
    if kwargs["args"] == "sft":
        kwargs["args"] = stock_config(tmp_path)
    elif kwargs["args"] == "edited":  # a config changed after it was validated is checked again
        kwargs["args"] = wit_config(tmp_path)
        kwargs["args"].loss_type = "dft"
    with pytest.raises(error, match=message):
        WITSFTTrainer(model=model, processing_class=tokenizer, **kwargs)


# --- dataset preparation -------------------------------------------------------------------------------------


def test_truncation_keeps_roles_aligned(tmp_path: Path, tokenizer: Any) -> None:
    tagged = RoleTagger(tokenizer).tag(CHAT[2])
    for mode, cut in (("keep_start", slice(None, 20)), ("keep_end", slice(-20, None))):
        args = wit_config(tmp_path, max_length=20, truncation_mode=mode, wit_preset="cpt")
        row = prepare_dataset(Dataset.from_list(CHAT[2:]), tokenizer, args, args.role_weights, False, "t")[0]
        assert row["input_ids"] == tagged.input_ids[cut]
        assert row[ROLES_KEY] == tagged.roles[cut]


def test_sharegpt_and_custom_text_rows_are_tagged(tmp_path: Path, tokenizer: Any) -> None:
    """ShareGPT ``conversations`` go through TRL's own ChatML conversion; ``dataset_text_field`` names the text."""
    args = wit_config(tmp_path)
    sharegpt = [{"conversations": [{"from": m["role"], "value": m["content"]} for m in CHAT[0]["messages"]]}]
    row = prepare_dataset(Dataset.from_list(sharegpt), tokenizer, args, args.role_weights, False, "t")[0]
    tagged = RoleTagger(tokenizer).tag(CHAT[0])
    assert (row["input_ids"], row[ROLES_KEY]) == (tagged.input_ids, tagged.roles)

    args = wit_config(tmp_path, dataset_text_field="body")
    row = prepare_dataset(Dataset.from_list([{"body": "Plain text."}]), tokenizer, args, args.role_weights, False, "t")[
        0
    ]
    assert row["input_ids"] == tokenizer("Plain text.<|im_end|>").input_ids
    assert row[ROLES_KEY] == [Role.RESPONSE] * (len(row["input_ids"]) - 1) + [Role.EOT]


def test_packing_marks_every_sequence_start(tmp_path: Path, tokenizer: Any) -> None:
    """bfd_split cuts a long sequence into fragments; each fragment's first token must never be a target."""
    args = wit_config(tmp_path, max_length=24, packing=True, packing_strategy="bfd_split")
    packed = prepare_dataset(Dataset.from_list(CHAT), tokenizer, args, args.role_weights, True, "t")
    tokens = sum(len(RoleTagger(tokenizer).tag(row).input_ids) for row in CHAT)
    assert sum(len(row["input_ids"]) for row in packed) == tokens  # nothing dropped
    for row in packed:
        assert len(row["input_ids"]) == len(row[ROLES_KEY]) == sum(row["seq_lengths"]) <= 24
        starts = torch.tensor([0, *row["seq_lengths"][:-1]]).cumsum(0)
        assert all(row[ROLES_KEY][start] == Role.PAD for start in starts.tolist())


# --- the loss against stock TRL ------------------------------------------------------------------------------


def test_it_preset_reproduces_stock_trl_on_plain_prompt_completion(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    dataset = Dataset.from_list(PLAIN)
    stock = SFTTrainer(model=model, args=stock_config(tmp_path), train_dataset=dataset, processing_class=tokenizer)
    ours = WITSFTTrainer(
        model=model, args=wit_config(tmp_path, wit_preset="it"), train_dataset=dataset, processing_class=tokenizer
    )
    stock_batch, our_batch = whole_batch(stock), whole_batch(ours)
    assert torch.equal(stock_batch["input_ids"], our_batch["input_ids"])
    assert torch.equal(stock_batch["labels"], our_batch["labels"])  # completion + EOS, nothing else
    count = int((our_batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        for num_items in (None, torch.tensor(3 * count)):  # evaluation, and a larger accumulated batch
            expected = stock.compute_loss(model, dict(stock_batch), num_items_in_batch=num_items)
            actual = ours.compute_loss(model, dict(our_batch), num_items_in_batch=num_items)
            # TRL 1.9's "nll" is the model's own CE on the same logits (equal up to summation order); TRL 1.16's
            # fused LM head recomputes the logits in tiles, which moves the 6th significant digit.
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=0)


# SmolLM2's ChatML template with TRL's {% generation %} markers around each assistant turn, its end-of-turn token
# and the newline after it (the usual span of training templates); it renders exactly like the original.
MARKED_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("mode", ["completion_only_loss", "assistant_only_loss"])
def test_conversational_difference_is_only_template_newlines(
    tmp_path: Path, model: Any, tokenizer: Any, mode: str
) -> None:
    """Stock TRL trains the ``\\n`` ChatML writes after ``<|im_end|>``: its completion mask covers everything after
    the prompt (conversational prompt/completion), its assistant mask whatever the template marks. The roles call
    that newline template (weight 0 under ``it``); every other trained token is the same."""
    if mode == "completion_only_loss":  # single-turn: assistant turns inside a prompt are context to TRL
        rows = [{"prompt": row["messages"][:-1], "completion": row["messages"][-1:]} for row in CHAT[:2]]
        stock_options: dict[str, Any] = {}
    else:
        original, tokenizer = tokenizer, copy.deepcopy(tokenizer)
        tokenizer.chat_template = MARKED_CHATML
        for row in CHAT:
            rendered = (t.apply_chat_template(row["messages"], tokenize=False) for t in (original, tokenizer))
            assert next(rendered) == next(rendered)
        rows, stock_options = CHAT, {"assistant_only_loss": True}
    dataset = Dataset.from_list(rows)
    stock = SFTTrainer(
        model=model, args=stock_config(tmp_path, **stock_options), train_dataset=dataset, processing_class=tokenizer
    )
    ours = WITSFTTrainer(
        model=model, args=wit_config(tmp_path, wit_preset="it"), train_dataset=dataset, processing_class=tokenizer
    )
    stock_batch, our_batch = whole_batch(stock), whole_batch(ours)
    ids = our_batch["input_ids"]
    assert torch.equal(stock_batch["input_ids"], ids)
    stock_trained, our_trained = trained_positions(stock_batch["labels"]), trained_positions(our_batch["labels"])
    assert our_trained < stock_trained
    extra = stock_trained - our_trained
    end_of_turn, newline = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer("\n").input_ids
    assert len(extra) == int((ids == end_of_turn).logical_and(our_batch[ROLES_KEY] == Role.EOT).sum())
    for row, position in extra:  # one per trained turn: the newline right after its end-of-turn token
        assert [int(ids[row, position])] == newline and int(ids[row, position - 1]) == end_of_turn
        assert our_batch[ROLES_KEY][row, position] == Role.TEMPLATE


# --- the loss against a hand computation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_terms(model: Any, tokenizer: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per CHAT row, float64 CE of every target (each row run alone, unpadded) and the target's role."""
    terms = []
    tagger = RoleTagger(tokenizer)
    for row in CHAT:
        tagged = tagger.tag(row)
        ids = torch.tensor(tagged.input_ids)
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0].double()
        log_probs = logits - logits.logsumexp(-1, keepdim=True)  # log_softmax, by hand
        ce = -log_probs[:-1].gather(-1, ids[1:, None])[:, 0]
        terms.append((ce, torch.tensor(tagged.roles[1:])))
    return terms


def hand_loss(terms: list[tuple[torch.Tensor, torch.Tensor]], weights: RoleWeights) -> torch.Tensor:
    """Σ w(role)·CE / #(targets with w > 0), over every row."""
    table = weights.table().double()
    total = sum((table[roles] * ce).sum() for ce, roles in terms)
    count = sum((table[roles] > 0).sum() for _, roles in terms)
    return total / count


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        ("padded", {}),
        ("bfd packing", {"packing": True, "max_length": 64}),
        ("padding-free", {"padding_free": True, "max_length": None}),
    ],
)
def test_wit_loss_equals_hand_computation(
    tmp_path: Path, model: Any, tokenizer: Any, hand_terms: list, layout: str, options: dict[str, Any]
) -> None:
    args = wit_config(tmp_path, **WIT, **options)
    trainer = WITSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(CHAT), processing_class=tokenizer)
    batch = whole_batch(trainer)
    if layout == "padded":
        assert (batch["attention_mask"] == 0).any()
    else:  # every sequence in one row, told apart by position_ids only
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        assert int((batch["position_ids"] == 0).sum()) == len(CHAT)
        assert (batch[ROLES_KEY][batch["position_ids"] == 0] == Role.PAD).all()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
    expected = hand_loss(hand_terms, args.role_weights)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=0)


# --- training ------------------------------------------------------------------------------------------------


def fresh_model(model_path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")


def test_gradient_accumulation_matches_one_batch(tmp_path: Path, model_path: Path, tokenizer: Any) -> None:
    """One SGD step over two rows of very different lengths: 2 micro-batches of 1 == 1 batch of 2, because the
    denominator counts the weighted tokens of the whole accumulated batch."""
    rows = Dataset.from_list([CHAT[0], CHAT[2]])
    updated = []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        model = fresh_model(model_path)
        args = wit_config(
            tmp_path / f"ga{accumulation}",
            **WIT,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            **ONE_SGD_STEP,
        )
        WITSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer).train()
        updated.append(dict(model.named_parameters()))
    initial = dict(fresh_model(model_path).named_parameters())
    for name, start in initial.items():
        one_batch, accumulated = (params[name].detach() - start.detach() for params in updated)
        assert one_batch.abs().max() > 0, name
        relative_error = float((accumulated - one_batch).norm() / one_batch.norm())
        assert relative_error < 1e-4, (name, relative_error)  # fp32 round-off in the update, nothing more


def test_train_logs_roles_saves_and_reloads(tmp_path: Path, model_path: Path, tokenizer: Any) -> None:
    model = fresh_model(model_path)
    # eager: TRL's entropy and mean_token_accuracy come from the logits, which the fused losses never build
    args = wit_config(
        tmp_path, **WIT, wit_loss_impl="eager", max_steps=2, logging_steps=1, per_device_train_batch_size=2
    )
    trainer = WITSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(CHAT),
        eval_dataset=Dataset.from_list(PLAIN),
        processing_class=tokenizer,
    )
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        for key in ("wit/loss_response", "wit/loss_instruction", "wit/loss_system", "entropy", "mean_token_accuracy"):
            assert torch.isfinite(torch.tensor(entry[key])), key
        assert entry["wit/tokens_response"] > 0 and entry["num_tokens"] > 0
    assert steps[1]["num_tokens"] > steps[0]["num_tokens"]  # cumulative, as in TRL
    metrics = trainer.evaluate()
    assert "eval_wit/loss_response" in metrics and "eval_mean_token_accuracy" in metrics
    trainer.save_model(str(tmp_path))
    reloaded = fresh_model(tmp_path)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight.detach(), rtol=0, atol=0)


def test_fused_chunked_loss_gives_the_eager_step_on_packed_rows(
    tmp_path: Path, model_path: Path, tokenizer: Any
) -> None:
    """wit_loss_impl='chunked' never builds logits; the update equals the eager one (BFD packing, padding-free)."""
    rows = Dataset.from_list(CHAT)
    updated, logs = {}, {}
    for impl in ("eager", "chunked"):
        model = fresh_model(model_path)
        args = wit_config(
            tmp_path / impl,
            **WIT,
            wit_loss_impl=impl,
            packing=True,
            max_length=128,
            per_device_train_batch_size=2,
            **ONE_SGD_STEP,
            logging_steps=1,
        )
        trainer = WITSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
        trainer.train()
        updated[impl] = dict(model.named_parameters())
        logs[impl] = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logs["chunked"]["loss"] == pytest.approx(logs["eager"]["loss"], rel=1e-5)
    assert logs["chunked"]["wit/loss_instruction"] == pytest.approx(logs["eager"]["wit/loss_instruction"], rel=1e-4)
    assert "entropy" not in logs["chunked"] and "entropy" in logs["eager"]  # no logits, no entropy
    initial = dict(fresh_model(model_path).named_parameters())
    for name, start in initial.items():
        eager, chunked = (params[name].detach() - start.detach() for params in (updated["eager"], updated["chunked"]))
        relative_error = float((chunked - eager).norm() / eager.norm())
        assert relative_error < 5e-4, (name, relative_error)  # fp32 summation order (measured max ~1.2e-4)


# --- a trainer class of the user's own ---------------------------------------------------------------------------

OFFSET = 0.25  # what the user's compute_loss adds: seen in the loss, so its running is checked


class UserSFTTrainer(SFTTrainer):
    """A user's own SFTTrainer: an extra constructor argument, a compute_loss that adds a term and a log hook, each
    calling super()."""

    def __init__(self, *args: Any, log_key: str = "user/loss_calls", **kwargs: Any) -> None:
        self.loss_calls, self.log_key = 0, log_key
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        self.loss_calls += 1
        assert ROLES_KEY not in inputs  # WIT took the roles out before this hook sees the batch
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        return (loss + OFFSET, outputs) if return_outputs else loss + OFFSET

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs[self.log_key] = float(self.loss_calls)
        super().log(logs, start_time)


class UserWITTrainer(WITSFTMixin, UserSFTTrainer):
    pass


def test_mixin_puts_the_logits_loss_between_the_users_class_and_sfttrainer() -> None:
    mro = UserWITTrainer.__mro__
    assert mro.index(UserSFTTrainer) < mro.index(LogitsSFTTrainer) == mro.index(SFTTrainer) - 1
    assert mro.index(WITSFTMixin) < mro.index(UserSFTTrainer)
    assert WITSFTTrainer.__bases__ == (WITSFTMixin, LogitsSFTTrainer)  # WITSFTTrainer is the mixin on TRL's class
    assert type("Sub", (UserWITTrainer,), {}).__mro__[1:] == mro  # subclassing it again changes nothing


def test_users_trainer_with_the_mixin_computes_the_wit_loss(
    tmp_path: Path, model: Any, tokenizer: Any, hand_terms: list
) -> None:
    """The user's compute_loss runs on top of the weighted loss: its result is the float64 reference plus what it
    adds, and WITSFTTrainer's loss on the same batch plus the same."""
    args = wit_config(tmp_path, **WIT, wit_loss_impl="eager")
    rows = Dataset.from_list(CHAT)
    trainer = UserWITTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, log_key="k")
    reference = WITSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    batch = whole_batch(trainer)
    assert torch.equal(batch[ROLES_KEY], whole_batch(reference)[ROLES_KEY])
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        wit_loss = reference.compute_loss(model, dict(batch))
    assert trainer.loss_calls == 1 and trainer.log_key == "k"
    torch.testing.assert_close((loss - OFFSET).double(), hand_loss(hand_terms, args.role_weights), rtol=2e-5, atol=0)
    torch.testing.assert_close(loss - OFFSET, wit_loss, rtol=1e-6, atol=0)


def one_sgd_step_each(
    classes: dict[str, type], tmp_path: Path, model_path: Path, tokenizer: Any
) -> tuple[dict[str, Any], dict[str, dict], Any]:
    """One SGD step on the CHAT rows per trainer class, each on a fresh model: the models, each one's logged step,
    and the last trainer."""
    rows = Dataset.from_list(CHAT)
    models, logs = {}, {}
    for name, trainer_class in classes.items():
        models[name] = fresh_model(model_path)
        args = wit_config(
            tmp_path / name, **WIT, per_device_train_batch_size=len(CHAT), **ONE_SGD_STEP, logging_steps=1
        )
        trainer = trainer_class(model=models[name], args=args, train_dataset=rows, processing_class=tokenizer)
        trainer.train()
        logs[name] = next(entry for entry in trainer.state.log_history if "loss" in entry)
    return models, logs, trainer


def test_users_trainer_with_the_mixin_trains_the_witsfttrainer_step(
    tmp_path: Path, model_path: Path, tokenizer: Any
) -> None:
    """One SGD step with the default (fused, logit-free) loss: the user's hooks ran, the logged loss is
    WITSFTTrainer's plus the user's constant, and the update (the gradient) is WITSFTTrainer's."""
    models, logs, trainer = one_sgd_step_each(
        {"wit": WITSFTTrainer, "user": UserWITTrainer}, tmp_path, model_path, tokenizer
    )
    assert trainer.wit_loss_impl != "eager" and trainer.loss_calls == 1
    assert logs["user"]["user/loss_calls"] == 1.0 and "user/loss_calls" not in logs["wit"]
    assert logs["user"]["loss"] == pytest.approx(logs["wit"]["loss"] + OFFSET, rel=1e-5)
    for key in ("wit/loss_response", "wit/tokens_response", "num_tokens"):
        assert logs["user"][key] == pytest.approx(logs["wit"][key], rel=1e-5), key
    wit_params = dict(models["wit"].named_parameters())
    for name, param in models["user"].named_parameters():
        torch.testing.assert_close(param, wit_params[name], rtol=1e-5, atol=1e-7)


def test_mixin_directly_on_sfttrainer_trains_the_witsfttrainer_step(
    tmp_path: Path, model_path: Path, tokenizer: Any
) -> None:
    """The documented form ``class T(WITSFTMixin, SFTTrainer)`` (it raised an MRO TypeError when the class was made)
    is WITSFTTrainer: same MRO below the class, and its own compute_loss calling super() gives WITSFTTrainer's
    logged loss and update over one SGD step."""

    def compute_loss(self: Any, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        self.loss_calls += 1
        return super(direct, self).compute_loss(model, inputs, return_outputs, num_items_in_batch)

    direct = type("DirectWITTrainer", (WITSFTMixin, SFTTrainer), {"loss_calls": 0, "compute_loss": compute_loss})
    assert direct.__mro__[1:] == WITSFTTrainer.__mro__[1:]
    models, logs, trainer = one_sgd_step_each({"wit": WITSFTTrainer, "direct": direct}, tmp_path, model_path, tokenizer)
    assert trainer.loss_calls == 1
    for key in ("loss", "wit/loss_response", "wit/tokens_response", "num_tokens"):
        assert logs["direct"][key] == pytest.approx(logs["wit"][key], rel=1e-6), key
    wit_params = dict(models["wit"].named_parameters())
    for name, param in models["direct"].named_parameters():
        torch.testing.assert_close(param, wit_params[name], rtol=1e-6, atol=1e-8)


def test_mixin_refuses_what_would_train_without_it(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    with pytest.raises(TypeError, match=r"WITSFTMixin must come before UserSFTTrainer .*class Bad\(WITSFTMixin, "):
        type("Bad", (UserSFTTrainer, WITSFTMixin), {})
    with pytest.raises(TypeError, match="WITSFTMixin mixes into a subclass of trl's SFTTrainer.*bases are WITSFTMixin"):
        type("Bad", (WITSFTMixin, Trainer), {})
    with pytest.raises(TypeError, match=r"Own\._prepare_dataset would never run"):
        type("Bad", (WITSFTMixin, type("Own", (SFTTrainer,), {"_prepare_dataset": lambda self, *a: a[0]})), {})
    own_loss = type(
        "OwnLoss", (SFTTrainer,), {"compute_loss": lambda self, model, inputs, *a, **k: model(**inputs).loss}
    )
    trainer = type("T", (WITSFTMixin, own_loss), {})(
        model=model, args=wit_config(tmp_path), train_dataset=Dataset.from_list(CHAT), processing_class=tokenizer
    )
    with pytest.raises(
        RuntimeError, match=r"T: the loss was computed without the weighted loss; OwnLoss\.compute_loss must"
    ):
        trainer.compute_loss(model, whole_batch(trainer))
    with pytest.raises(TypeError, match="UserWITTrainer needs a WITConfig .*got SFTConfig"):
        UserWITTrainer(
            model=model, args=stock_config(tmp_path), train_dataset=Dataset.from_list(CHAT), processing_class=tokenizer
        )


# --- packed rows kept apart ------------------------------------------------------------------------------------

ROLE_METRICS = [f"wit/{kind}_{role}" for kind in ("loss", "tokens") for role in ("system", "instruction", "response")]


def _first_step_and_eval(model: Any, tmp_path: Path, tokenizer: Any, **options: Any) -> tuple[dict, dict]:
    """One step over every CHAT row (its per-role losses are the model's before the update), then evaluation."""
    args = wit_config(
        tmp_path, **WIT, wit_loss_impl="eager", per_device_train_batch_size=len(CHAT), **ONE_SGD_STEP, **options
    )
    args.learning_rate = 1e-9  # evaluation sees (almost) the same model in every layout
    trainer = WITSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(CHAT),
        eval_dataset=Dataset.from_list(CHAT),
        processing_class=tokenizer,
    )
    trainer.train()
    step = next(entry for entry in trainer.state.log_history if "loss" in entry)
    return step, trainer.evaluate()


def test_packed_and_padding_free_roles_equal_unpacked(tmp_path: Path, model_path: Path, tokenizer: Any, caplog) -> None:
    """Per-role training and evaluation losses are the same whether rows are padded, BFD-packed or flattened
    (padding-free): no packed sequence sees another. A model TRL loads for packing gets an isolating attention."""
    padded = _first_step_and_eval(fresh_model(model_path), tmp_path / "padded", tokenizer, logging_steps=1)
    for name, options in {
        "packed": {"packing": True},
        "padding_free": {"padding_free": True, "max_length": None},
    }.items():
        with caplog.at_level("WARNING", logger="wit_plugin"):
            step, metrics = _first_step_and_eval(
                str(model_path), tmp_path / name, tokenizer, logging_steps=1, **options
            )
        assert "attn_implementation=sdpa" in caplog.text  # chosen and said once
        for key in ROLE_METRICS:
            assert step[key] == pytest.approx(padded[0][key], rel=1e-4), (name, key)
            assert metrics[f"eval_{key}"] == pytest.approx(padded[1][f"eval_{key}"], rel=1e-4), (name, key)


def test_packing_under_an_attention_that_mixes_rows_is_refused(tmp_path: Path, model_path: Path, tokenizer: Any):
    """A registered attention function without a mask builder attends across the sequences of a packed row."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from wit_plugin.packing import PackingAttentionError

    AttentionInterface.register("wit_test_unmasked", sdpa_attention_forward)
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="wit_test_unmasked")
    rows = Dataset.from_list(CHAT)
    WITSFTTrainer(model=model, args=wit_config(tmp_path), train_dataset=rows, processing_class=tokenizer)  # unpacked
    for options in ({"packing": True}, {"padding_free": True, "max_length": None}):
        with pytest.raises(PackingAttentionError, match="attn_implementation='wit_test_unmasked'.*attend to each"):
            WITSFTTrainer(
                model=model, args=wit_config(tmp_path, **options), train_dataset=rows, processing_class=tokenizer
            )
    loader = {"model_init_kwargs": {"attn_implementation": "wit_test_unmasked"}, "packing": True}
    with pytest.raises(PackingAttentionError, match="attn_implementation='wit_test_unmasked'"):
        WITSFTTrainer(model=str(model_path), args=wit_config(tmp_path, **loader), train_dataset=rows)


def test_num_tokens_is_logged_with_the_default_loss(tmp_path: Path, model_path: Path, tokenizer: Any) -> None:
    """TRL's cumulative ``num_tokens`` also when the loss builds no logits (wit_loss_impl's default)."""
    args = wit_config(tmp_path, **WIT, max_steps=2, logging_steps=1, per_device_train_batch_size=len(CHAT))
    trainer = WITSFTTrainer(
        model=fresh_model(model_path), args=args, train_dataset=Dataset.from_list(CHAT), processing_class=tokenizer
    )
    trainer.train()
    assert trainer.wit_loss_impl != "eager"  # the default builds no logits on this machine
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    tokens = sum(len(row["input_ids"]) for row in trainer.train_dataset)  # every row once per step
    assert [entry["num_tokens"] for entry in steps] == [tokens, 2 * tokens]


def test_rows_mixing_string_and_list_contents_load_with_text_contents(tmp_path: Path, tokenizer: Any) -> None:
    import pyarrow

    from wit_plugin import text_contents

    mixed = copy.deepcopy(CHAT[:2])
    mixed[1]["messages"][1]["content"] = [
        {"type": "text", "text": "Translate the word "},
        {"type": "text", "text": "cat, please."},
    ]
    with pytest.raises((pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, TypeError)):
        Dataset.from_list(mixed)
    args = wit_config(tmp_path)
    rows = prepare_dataset(Dataset.from_list(text_contents(mixed)), tokenizer, args, args.role_weights, False, "t")
    stock = prepare_dataset(Dataset.from_list(CHAT[:2]), tokenizer, args, args.role_weights, False, "t")
    assert list(rows) == list(stock)
    mixed[1]["messages"][1]["content"].append({"type": "image", "url": "cat.png"})
    with pytest.raises(ValueError, match=r"row 1: messages\[1\]\.content\[2\] is a 'image' part"):
        text_contents(mixed)


def test_tool_calls_the_template_drops_are_refused_unless_wit_drop_unrendered(
    tmp_path: Path, tokenizer: Any, caplog: Any
) -> None:
    import logging

    call = {"type": "function", "function": {"name": "w", "arguments": "{}"}}
    row = copy.deepcopy(CHAT[0])
    row["messages"][2:2] = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "5"},
    ]
    row["messages"][-1]["loss_weight"] = 1.0
    args = wit_config(tmp_path)
    with pytest.raises(ValueError, match=r"t dataset, row 0: the chat template .* messages\[2\]\.tool_calls"):
        prepare_dataset(Dataset.from_list([row]), tokenizer, args, args.role_weights, False, "t")
    args = wit_config(tmp_path, wit_drop_unrendered=True)
    with caplog.at_level(logging.WARNING):
        tagged = prepare_dataset(Dataset.from_list([row]), tokenizer, args, args.role_weights, False, "t")[0]
    assert tokenizer.decode(tagged["input_ids"]).count("<|im_start|>assistant") == 1
    assert "t dataset: dropped what the chat template does not render: 1 tool_calls, 1 empty_turns" in caplog.text
    assert "message key 'loss_weight'" in caplog.text and "t dataset, row 0, messages[4].loss_weight" in caplog.text


def test_the_run_record_has_each_datasets_dropped_fields_when_tagged_in_worker_processes(
    tmp_path: Path, model: Any, tokenizer: Any
) -> None:
    """With dataset_num_proc=2 the rows are tagged in workers: the counts still come out exact, per dataset."""
    from wit_plugin.training.records import RunRecordCallback

    call = {"type": "function", "function": {"name": "w", "arguments": "{}"}}
    rows = []
    for index, row in enumerate([copy.deepcopy(row) for row in CHAT * 2]):
        if index % 2 == 0:  # a tool-call turn with no text before the final answer: call dropped, turn removed
            row["messages"][-1:-1] = [
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "5"},
            ]
        rows.append(row)
    args = wit_config(tmp_path, wit_drop_unrendered=True, dataset_num_proc=2, eval_strategy="no")
    trainer = WITSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:3]),
        processing_class=tokenizer,
    )
    record = next(c.record for c in trainer.callback_handler.callbacks if isinstance(c, RunRecordCallback))
    none = {"tools": 0, "content": 0, "reasoning_content": 0}
    assert record["dropped_unrendered"] == [
        {"dataset": "train", "tool_calls": 3, "empty_turns": 3, **none},
        {"dataset": "eval", "tool_calls": 2, "empty_turns": 2, **none},
    ]
    assert "wit_dropped" not in trainer.train_dataset.column_names  # only the token columns reach the collator
