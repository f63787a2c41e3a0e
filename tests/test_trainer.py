"""The trainer's normalisation: gradient accumulation and data parallelism give the one-batch gradient."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer_case import ROWS, WITTrainer, one_step


def assert_same_step(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for name in a["updates"]:
        torch.testing.assert_close(a["updates"][name], b["updates"][name], rtol=1e-4, atol=atol)


@pytest.fixture(scope="module")
def one_batch(model_path, tmp_path_factory):
    return one_step(str(model_path), str(tmp_path_factory.mktemp("one")), batch_size=2, accumulation=1)


def test_gradient_accumulation_equals_one_batch(model_path, tmp_path, one_batch):
    accumulated = one_step(str(model_path), str(tmp_path), batch_size=1, accumulation=2)
    assert_same_step(accumulated, one_batch)
    assert "wit/loss_response" in accumulated["log"] and accumulated["log"]["wit/tokens_eot"] == 2


def test_fused_chunked_loss_gives_the_eager_step(model_path, tmp_path, one_batch):
    chunked = one_step(str(model_path), str(tmp_path), batch_size=2, accumulation=1, loss_impl="chunked")
    # the tied embedding's gradient sums the LM head's in another order: fp32 round-off up to a few 1e-6
    assert_same_step(chunked, one_batch, atol=1e-5)
    # role metrics of zero-weight roles are computed too (forward only) and match the eager ones
    for key in ("wit/loss_template", "wit/loss_instruction", "wit/loss_response", "wit/tokens_template"):
        assert chunked["log"][key] == pytest.approx(one_batch["log"][key], rel=1e-4)


def test_fused_loss_under_bf16_mixed_precision_gives_the_eager_step(model_path, tmp_path):
    # Accelerate hands the loss fp32 hidden states from a bf16 model: the fused loss takes them back to bf16
    eager = one_step(str(model_path), str(tmp_path / "eager"), batch_size=2, accumulation=1, bf16=True)
    chunked = one_step(str(model_path), str(tmp_path / "chunked"), 2, 1, loss_impl="chunked", bf16=True)
    assert chunked["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    for name in eager["updates"]:
        update, reference = chunked["updates"][name], eager["updates"][name]
        # bf16 parameters: an update is the difference of two bf16 values, so the gradients' last-bit
        # differences flip a few elements by one bf16 step; nearly all are identical
        assert reference.norm() > 0 and (update != reference).float().mean() < 0.01


def test_fused_loss_under_bf16_autocast_of_fp32_weights_computes_the_head_in_bf16(model_path, tmp_path):
    # fp32 weights, bf16 autocast: the fused loss runs outside the model's forward, so without the autocast
    # entered again its head would compute in fp32 (and CCE could not backpropagate at all), unlike eager's
    eager = one_step(str(model_path), str(tmp_path / "eager"), 2, 1, bf16=True, fp32_weights=True)
    chunked = one_step(str(model_path), str(tmp_path / "chunked"), 2, 1, "chunked", bf16=True, fp32_weights=True)
    fp32 = one_step(str(model_path), str(tmp_path / "fp32"), 2, 1, "chunked")
    assert abs(chunked["loss"] - eager["loss"]) < abs(fp32["loss"] - eager["loss"]) / 10
    for name, reference in eager["updates"].items():
        # bf16 gradients round differently in the chunked head; still far closer than fp32's
        gap, fp32_gap = (chunked["updates"][name] - reference).norm(), (fp32["updates"][name] - reference).norm()
        assert gap < fp32_gap / 2, name


def _tiny_trainer(model_path, tmp_path, weights: str | None = "wit", **setup):
    """A one-layer model with SmolLM2's tokenizer: enough for the trainer's bookkeeping (set up with ``weights``,
    unless None)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM, TrainingArguments

    from wit_plugin.roles import RoleWeights
    from wit_plugin.tagging import RoleTagger

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    tagger = RoleTagger(tokenizer, "chat")
    once, thrice = (Dataset.from_list([tagger.tag(row).as_features() for row in ROWS * n]) for n in (1, 3))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True, remove_unused_columns=False
    )
    trainer = WITTrainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=once,
        eval_dataset=once,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )
    if weights is not None:
        trainer.setup_wit(RoleWeights.preset(weights), **setup)
    return trainer, once, thrice


def test_install_wit_sets_up_the_loss_the_evaluation_callbacks_and_the_run_record(model_path, tmp_path):
    """What both adapters call once their trainer exists (Axolotl's post_trainer_create, TRL's __init__)."""
    from wit_plugin.evaluation.callback import CrossTaskCallback, POSIXCallback
    from wit_plugin.roles import RoleWeights
    from wit_plugin.tagging import TAGGING_VERSION
    from wit_plugin.training import RunDescription, install_wit
    from wit_plugin.training.records import RunRecordCallback

    prompts, tasks = tmp_path / "sets.jsonl", tmp_path / "tasks.jsonl"
    prompts.write_text('{"prompts": ["Name a colour.", "Name a colour please."]}\n')
    tasks.write_text('{"task": "t", "input": "2 + 2 =", "label": "4", "options": ["4", "5"]}\n')
    values = {
        "wit_preset": "it",
        "wit_loss_impl": None,  # unset: auto, which parameter sharding makes eager
        "wit_posix_prompts": str(prompts),
        "wit_posix_steps": 5,
        "wit_crosstask_pool": str(tasks),
        "wit_crosstask_targets": str(tasks),
        "wit_crosstask_steps": 3,
    }
    trainer, _, _ = _tiny_trainer(model_path, tmp_path, weights=None)
    taggings = [{"format": "chat"}, {"format": "alpaca"}]
    run = RunDescription("test", "base", [{"path": "a"}, {"path": "b"}], taggings, {"seed": 7})
    install_wit(trainer, RoleWeights.preset("it"), values, "FSDP", run)
    assert trainer.wit_weights == RoleWeights.preset("it") and trainer.wit_loss_impl == "eager"
    assert trainer.compute_loss_func == trainer._wit_loss
    callbacks = trainer.callback_handler.callbacks
    assert [c.every_n_steps for c in callbacks if isinstance(c, (POSIXCallback, CrossTaskCallback))] == [5, 3]
    (record,) = [c.record for c in callbacks if isinstance(c, RunRecordCallback)]
    assert (record["framework"], record["base_model"], record["loss_impl"], record["seed"]) == (
        "test",
        "base",
        "eager",
        7,
    )
    assert record["weights"]["response"] == 1 and record["options"] == values
    assert (
        record["tagging"] == {"version": TAGGING_VERSION, "format": "chat"} and record["dataset_taggings"] == taggings
    )


def test_eval_role_metrics_belong_to_their_own_loop(model_path, tmp_path):
    trainer, once, thrice = _tiny_trainer(model_path, tmp_path, loss_impl="chunked")
    key = "wit/tokens_response"
    first = trainer.evaluate()[f"eval_{key}"]
    assert first > 0
    assert trainer.predict(thrice).metrics[f"test_{key}"] == 3 * first  # predict reports its own tokens ...
    assert trainer.evaluate()[f"eval_{key}"] == first  # ... and leaves none behind for the next evaluation
    assert trainer.evaluate(metric_key_prefix="held_out")[f"held_out_{key}"] == first
    several = trainer.evaluate({"a": once, "b": thrice})
    assert (several[f"eval_a_{key}"], several[f"eval_b_{key}"]) == (first, 3 * first)


@pytest.mark.parametrize("loss_impl", ["eager", "chunked"])
def test_weighted_role_metrics_report_only_trained_roles(model_path, tmp_path, loss_impl):
    trainer, _, _ = _tiny_trainer(model_path, tmp_path, "it", loss_impl=loss_impl, role_metrics="weighted")
    reported = {key for key in trainer.evaluate() if "wit/" in key}
    trained = ("response", "eot", "reasoning")  # the it preset's response group
    assert reported == {f"eval_wit/{kind}_{role}" for kind in ("loss", "tokens") for role in trained} - {
        "eval_wit/loss_reasoning"  # no reasoning token in these rows: a count of 0 and no mean
    }


DDP_LOSS_IMPLS = ("eager", "chunked")


@pytest.fixture(scope="module")
def two_gloo_processes(model_path, tmp_path_factory) -> dict:
    """One step under torchrun with two gloo processes, per loss implementation: one launch serves them all."""
    out = tmp_path_factory.mktemp("ddp") / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port: the Python 3.12 stacks' suites run side by side in CI
        "--nproc_per_node",
        "2",
        "tests/trainer_case.py",
        str(model_path),
        str(out),
        ",".join(DDP_LOSS_IMPLS),
    ]
    subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=600)
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("loss_impl", DDP_LOSS_IMPLS)
def test_two_gloo_processes_equal_one_process(two_gloo_processes, one_batch, loss_impl):
    assert_same_step(two_gloo_processes[loss_impl], one_batch, atol=1e-5)


def test_parameter_sharding_chooses_the_eager_loss_for_both_adapters(tmp_path):
    from wit_plugin.training.mixin import check_fused_loss, loss_impl_under, parameter_sharding

    zero3 = tmp_path / "ds.json"
    zero3.write_text('{"zero_optimization": {"stage": 3}}')
    assert parameter_sharding(["full_shard"], None) == "FSDP"
    assert parameter_sharding([], str(zero3)) == parameter_sharding(None, {"zero_optimization": {"stage": 3}})
    assert parameter_sharding([], {"zero_optimization": {"stage": 2}}) is None
    assert loss_impl_under("auto", "FSDP") == "eager" and loss_impl_under("auto", None) == "auto"
    with pytest.raises(ValueError, match="'chunked' with DeepSpeed ZeRO-3: the fused loss needs the whole LM head"):
        check_fused_loss("chunked", "DeepSpeed ZeRO-3")
    check_fused_loss("chunked", None)
    check_fused_loss("auto", "FSDP")
