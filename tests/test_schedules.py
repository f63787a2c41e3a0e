"""Weight schedules: closed-form values, validation naming the key, one schema for Axolotl and TRL, the weight in
effect logged and recorded, resume continuing it exactly, and `wit compare` showing it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.normalize_case import tiny_model, trainer
from tests.trainer_case import ROWS
from wit_plugin import options
from wit_plugin.roles import RoleSchedules, RoleWeights, WeightError
from wit_plugin.schedules import parse_schedule


def trl_config(tmp_path, **values: Any) -> Any:
    from wit_plugin import WITConfig

    return WITConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True, **values)


COSINE = {"start": 1.0, "end": 0.2, "schedule": "cosine", "warmup": 0.25}


@pytest.mark.parametrize(
    ("value", "progress", "expected"),
    [
        (0.4, 0.7, 0.4),
        ({"start": 0.5, "schedule": "constant"}, 0.9, 0.5),
        ({"start": 1.0, "end": 0.2, "schedule": "linear"}, 0.5, 0.6),
        ({"start": 1.0, "end": 0.2, "schedule": "linear", "warmup": 0.2}, 0.1, 1.0),  # warm-up holds start
        ({"start": 1.0, "end": 0.2, "schedule": "linear", "warmup": 0.2}, 0.6, 0.6),  # q = 0.5
        ({"start": 0.0, "end": 2.0, "schedule": "linear"}, 1.0, 2.0),
        (COSINE, 0.25, 1.0),
        (COSINE, 0.5, 1.0 - 0.8 * 0.25),  # q = 1/3: (1 + cos π/3) / 2 = 3/4 of the way back from end
        (COSINE, 0.625, 0.6),  # q = 1/2: the midpoint
        (COSINE, 1.0, 0.2),
        ({"start": 1.0, "end": 0.0, "schedule": "step", "warmup": 0.5}, 0.49, 1.0),
        ({"start": 1.0, "end": 0.0, "schedule": "step", "warmup": 0.5}, 0.5, 0.0),
    ],
)
def test_schedule_values_are_the_closed_forms(value, progress, expected):
    assert parse_schedule(value, "wit_prompt_weight").at(progress) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"wit_prompt_weight": {"start": 1, "end": 0, "schedule": "cos"}},
            r"wit_prompt_weight\.schedule: unknown schedule 'cos'",
        ),
        ({"wit_eot_weight": {"start": 1, "end": 0}}, r"wit_eot_weight\.schedule: unknown schedule None"),
        ({"wit_response_weight": {"end": 1, "schedule": "linear"}}, r"wit_response_weight: a schedule needs 'start'"),
        (
            {"wit_system_weight": {"start": 1, "schedule": "cosine"}},
            r"wit_system_weight: a cosine schedule needs 'end'",
        ),
        (
            {"wit_prompt_weight": {"start": -0.1, "end": 1, "schedule": "linear"}},
            r"wit_prompt_weight\.start must be >= 0",
        ),
        ({"wit_prompt_weight": {"start": 1, "end": -2, "schedule": "linear"}}, r"wit_prompt_weight\.end must be >= 0"),
        (
            {"wit_prompt_weight": {"start": 1, "end": 0, "schedule": "linear", "warmup": 1.0}},
            r"warmup must be .* \[0, 1\)",
        ),
        ({"wit_prompt_weight": {"start": 1, "end": 0, "schedule": "linear", "warmup": -0.1}}, r"warmup must be >= 0"),
        (
            {"wit_prompt_weight": {"start": 1, "end": 0, "schedule": "step"}},
            r"wit_prompt_weight: a step schedule .* warmup > 0",
        ),
        ({"wit_prompt_weight": {"start": 1, "end": 2, "schedule": "constant"}}, r"constant schedule has one value"),
        ({"wit_prompt_weight": {"start": 1, "end": 0, "schedule": "linear", "warm": 0.1}}, r"unknown schedule field"),
        (
            {"wit_prompt_weight": {"start": "1", "end": 0, "schedule": "linear"}},
            r"wit_prompt_weight\.start must be a number",
        ),
        ({"wit_prompt_weight": "0.5"}, r"wit_prompt_weight must be a number"),
        # all zero at some step: it trains only the response, which decays to 0 at the end of training
        (
            {"wit_preset": "it", "wit_response_weight": {"start": 1, "end": 0, "schedule": "cosine"}},
            "all wit role weights are zero at training progress 1",
        ),
        # prompt weight 0 until the step, the response weight 0 from its start: nothing in between
        (
            {
                "wit_preset": "it",
                "wit_response_weight": {"start": 0, "end": 1, "schedule": "step", "warmup": 0.3},
            },
            "all wit role weights are zero at training progress 0",
        ),
    ],
)
def test_bad_schedules_are_refused_naming_the_key(values, message, tmp_path):
    from wit_plugin.integrations.axolotl.args import WITArgs

    with pytest.raises(WeightError, match=message):
        options.check_weights(values)
    with pytest.raises(WeightError, match=message):  # TRL
        trl_config(tmp_path, **values)
    with pytest.raises(ValueError, match="wit_") as raised:  # Axolotl's schema: the same check, or its strict type
        WITArgs(**values)
    key = next(iter(values.keys() - {"wit_preset"}))
    assert key in str(raised.value) or "all wit role weights are zero" in str(raised.value)


def test_a_zero_that_never_meets_the_others_is_accepted():
    # prompt weights 0 before the step, the response 0 after it: at every step one group is trained
    values = {
        "wit_prompt_weight": {"start": 0, "end": 1, "schedule": "step", "warmup": 0.5},
        "wit_response_weight": {"start": 1, "end": 0, "schedule": "step", "warmup": 0.5},
    }
    schedules = options.check_weights(values)
    assert schedules.at(0.2).instruction == 0 and schedules.at(0.7).response == 0
    assert schedules.ever == RoleWeights.groups(1.0, 1.0)


def test_the_schema_takes_a_number_or_a_mapping_strictly_for_both_frameworks(tmp_path):
    from wit_plugin.integrations.axolotl.args import WITArgs

    assert WITArgs(wit_prompt_weight=0.5).wit_prompt_weight == 0.5  # never cast through an int
    assert WITArgs(wit_prompt_weight=COSINE).wit_prompt_weight == COSINE
    with pytest.raises(ValueError, match="wit_prompt_weight"):
        WITArgs(wit_prompt_weight="0.5")
    assert trl_config(tmp_path, wit_prompt_weight=0.5).wit_prompt_weight == 0.5
    with pytest.raises(WeightError, match="wit_prompt_weight must be a number"):
        trl_config(tmp_path, wit_prompt_weight="0.5")
    assert "float ≥ 0 or schedule" in options.markdown_table()
    with pytest.raises(WeightError, match="follow schedules"):  # no single set of weights to hand out silently
        RoleWeights.from_options({"wit_prompt_weight": COSINE})


def closed_form(step: int, max_steps: int) -> dict[str, float]:
    """The weights of COSINE on the prompt group and λr=0.6 at the step after ``step`` optimiser steps, by hand."""
    p = step / max_steps
    prompt = 1.0 if p < 0.25 else 0.2 + 0.8 * (1 + math.cos(math.pi * (p - 0.25) / 0.75)) / 2
    return {"template": prompt, "system": prompt, "instruction": prompt, "response": 0.6, "eot": 0.6, "reasoning": 0.6}


def test_axolotl_and_trl_resolve_the_same_config_to_the_same_weights_at_every_step(tmp_path):
    from wit_plugin.integrations.axolotl.args import WITArgs

    config = {"wit_prompt_weight": COSINE, "wit_response_weight": 0.6}
    axolotl = options.check_weights(WITArgs(**config).model_dump())  # what the plugin's post_trainer_create installs
    trl = trl_config(tmp_path, **config).role_schedules
    assert axolotl == trl
    for step in range(8):
        assert axolotl.at(step / 8) == RoleWeights(**closed_form(step, 8))


def test_trl_logs_the_weight_in_effect_at_each_step_and_records_the_schedule(tmp_path, model_path, tokenizer):
    from datasets import Dataset

    from wit_plugin import WITConfig, WITSFTTrainer
    from wit_plugin.training.records import read_record

    args = WITConfig(
        output_dir=str(tmp_path),
        report_to="none",
        wit_prompt_weight=COSINE,
        wit_response_weight=0.6,
        wit_loss_impl="eager",
        max_steps=4,
        logging_steps=1,
        per_device_train_batch_size=2,
        max_length=128,
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trained = WITSFTTrainer(
        model=tiny_model(len(tokenizer)),
        args=args,
        train_dataset=Dataset.from_list(ROWS * 4),
        processing_class=tokenizer,
    )
    trained.train()
    logged = [entry for entry in trained.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4]
    for entry in logged:  # the log after step k reports the weights step k trained with (k - 1 steps done)
        expected = closed_form(entry["step"] - 1, 4)
        assert {role: entry[f"wit/weight_{role}"] for role in expected} == pytest.approx(expected, abs=1e-12)
    record = read_record(tmp_path)
    assert record["weights"]["instruction"] == {**COSINE, "warmup": 0.25} and record["weights"]["response"] == 0.6
    assert record["options"]["wit_prompt_weight"] == COSINE


def test_resume_continues_the_schedule_exactly(model_path, tmp_path):
    """4 steps straight == 2 steps, stop, resume from the checkpoint, 2 more: same logged weights, same parameters."""
    from transformers import TrainerCallback

    values = {"wit_prompt_weight": {"start": 1.0, "end": 0.0, "schedule": "linear", "warmup": 0.25}}
    common = {
        "per_device_train_batch_size": 2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 2,
    }
    rows = ROWS * 4

    def logged_weights(history: list[dict[str, Any]]) -> dict[int, float]:
        return {entry["step"]: entry["wit/weight_instruction"] for entry in history if "loss" in entry}

    straight = trainer(str(model_path), str(tmp_path / "straight"), values, rows, **common)
    straight.train()

    class StopAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    first = trainer(str(model_path), str(tmp_path / "resumed"), values, rows, **common)
    first.add_callback(StopAtTwo())
    first.train()
    assert first.state.global_step == 2
    second = trainer(str(model_path), str(tmp_path / "resumed"), values, rows, **common)
    second.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    resumed = {**logged_weights(first.state.log_history), **logged_weights(second.state.log_history)}
    # by hand: step k runs at progress (k-1)/4; warm-up holds 1 until 0.25, then linear to 0 at 1
    assert logged_weights(straight.state.log_history) == resumed == pytest.approx({1: 1.0, 2: 1.0, 3: 2 / 3, 4: 1 / 3})
    for (name, a), (_, b) in zip(straight.model.named_parameters(), second.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_the_run_record_and_wit_compare_show_the_schedule(model_path, tmp_path):
    from wit_plugin.cli.compare import _weights
    from wit_plugin.training import RunDescription, install_wit
    from wit_plugin.training.records import RunRecordCallback

    values = {"wit_prompt_weight": COSINE, "wit_response_weight": 0.6}
    built = trainer(str(model_path), str(tmp_path), {"wit_preset": "it"})
    install_wit(built, options.check_weights(values), values, None, RunDescription("test", None, [], []))
    (record,) = [c.record for c in built.callback_handler.callbacks if isinstance(c, RunRecordCallback)]
    assert record["weights"]["template"] == {"start": 1.0, "end": 0.2, "schedule": "cosine", "warmup": 0.25}
    assert RoleSchedules.from_options(values).as_json() == record["weights"]
    assert _weights({"weights": record["weights"]}) == "λp=1→0.2 (cosine, warmup 0.25) λr=0.6"
    linear = {**record["weights"], "instruction": {"start": 0.5, "end": 0.1, "schedule": "linear", "warmup": 0.0}}
    assert _weights({"weights": linear}) == "λp=0.5→0.1 (linear) λr=0.6 tpl=1→0.2 (cosine, warmup 0.25)"
    assert _weights({"weights": RoleWeights.preset("wit").__dict__}) == "λp=0.4 λr=0.6"  # a number stays a number
    wit = RoleWeights.preset("wit").__dict__
    assert _weights({"weights": wit, "normalize": "weights"}) == "λp=0.4 λr=0.6 N=Σw"  # wit_normalize: weights shown
    assert _weights({"weights": wit, "normalize": "tokens"}) == "λp=0.4 λr=0.6"


@pytest.mark.slow
def test_axolotl_logs_and_records_the_same_schedule_as_trl(model_path, tmp_path):
    """`axolotl train` with the plugin and the config of the TRL test above: the same weights at every step."""
    pytest.importorskip("axolotl")
    from tests.test_axolotl_e2e import AXOLOTL_TRAIN, train
    from wit_plugin.training.records import read_record

    logs, out = train(
        model_path, tmp_path, AXOLOTL_TRAIN, max_steps=4, wit_prompt_weight=COSINE, wit_response_weight=0.6
    )
    logged = [entry for entry in logs if "loss" in entry]
    assert len(logged) == 4
    for step, entry in enumerate(logged):  # the console prints 4 significant digits
        expected = closed_form(step, 4)
        assert {role: float(entry[f"wit/weight_{role}"]) for role in expected} == pytest.approx(expected, rel=1e-3)
    record = read_record(out)
    assert record["weights"]["instruction"] == {**COSINE, "warmup": 0.25} and record["weights"]["eot"] == 0.6
    assert record["train"]["wit/weight_instruction"] == pytest.approx(closed_form(3, 4)["instruction"], abs=1e-12)


def test_wit_inspect_shows_a_scheduled_weight_at_the_start_and_its_schedule(model_path, tmp_path, capsys):
    pytest.importorskip("axolotl")
    import json

    from wit_plugin.cli import main

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    config = tmp_path / "cfg.yml"
    config.write_text(
        f"base_model: {model_path}\nplugins: [wit_plugin.WITPlugin]\n"
        "wit_prompt_weight: {start: 0.0, end: 1.0, schedule: linear}\n"
        f"datasets:\n  - path: {data}\n    type: chat_template\n"
    )
    assert main(["inspect", "--config", str(config)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "instruction=0," in out  # the weight at step 0
    assert "schedules: template=0→1 (linear), system=0→1 (linear), instruction=0→1 (linear), response=0.6" in out
