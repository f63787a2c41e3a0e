"""``wit_normalize`` (tokens: Σ w·CE / #(w > 0); weights: Σ w·CE / Σ w), exact over gradient accumulation and
data-parallel ranks, against an independent float64 computation of each formula on the same rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.normalize_case import (
    ROLE_WEIGHT,
    VALUES,
    close_to,
    features,
    one_step,
    reference_gradient,
    reference_loss,
    tiny_model,
    trainer,
)
from tests.trainer_case import ROWS
from wit_plugin.roles import MESSAGE_WEIGHTS_KEY, ROLES_KEY, Role

REPO = Path(__file__).resolve().parents[1]
NORMALIZATIONS = ("tokens", "weights")


@pytest.fixture(scope="module")
def references(model_path) -> dict[str, tuple[float, dict[str, torch.Tensor]]]:
    rows = features(str(model_path))
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(model_path))
    return {
        normalize: reference_gradient(tiny_model(vocab), rows, ROLE_WEIGHT, normalize) for normalize in NORMALIZATIONS
    }


def assert_step_is_reference(step: dict, reference: tuple[float, dict[str, torch.Tensor]]) -> None:
    loss, gradient = reference
    assert step["loss"] == pytest.approx(loss, abs=1e-4)  # transformers logs the loss rounded to 4 decimals
    for name, update in step["updates"].items():
        assert gradient[name].abs().max() > 0 or name.endswith("norm.weight"), name
        assert close_to(update, gradient[name]), name


def test_the_two_normalisations_differ_on_these_rows(references):
    # else the tests below could not tell them apart
    assert references["tokens"][0] != pytest.approx(references["weights"][0], rel=1e-3)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize(("batch_size", "accumulation"), [(2, 1), (1, 2)])
def test_one_step_is_the_float64_formula(model_path, tmp_path, references, normalize, batch_size, accumulation):
    """1 batch of 2 and 2 accumulated micro-batches of 1 both give the gradient of the formula on both rows."""
    step = one_step(str(model_path), str(tmp_path), normalize, batch_size, accumulation)
    assert_step_is_reference(step, references[normalize])


@pytest.fixture(scope="module")
def two_gloo_ranks(model_path, tmp_path_factory) -> dict[str, dict]:
    """One step per normalisation under torchrun, two gloo processes with one row each."""
    results = {}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for normalize in NORMALIZATIONS:
        out = tmp_path_factory.mktemp(f"gloo_{normalize}") / "step.pt"
        # --standalone: a free port (the Python 3.12 stacks' suites run side by side in CI)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += ["tests/normalize_case.py", str(model_path), str(out), normalize]
        subprocess.run(command, check=True, env=env, cwd=REPO, timeout=600)
        results[normalize] = torch.load(out)
    return results


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_two_gloo_ranks_give_the_float64_formula(two_gloo_ranks, references, normalize):
    assert_step_is_reference(two_gloo_ranks[normalize], references[normalize])


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_evaluation_uses_the_batchs_own_count_or_sum(model_path, tmp_path, normalize):
    built = trainer(
        str(model_path), str(tmp_path), {**VALUES, "wit_normalize": normalize}, per_device_eval_batch_size=2
    )
    loss = built.evaluate(built.train_dataset)["eval_loss"]
    expected = reference_loss(
        tiny_model(built.model.config.vocab_size), features(str(model_path)), ROLE_WEIGHT, normalize
    )
    assert loss == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_n_multiplies_in_the_message_weights_of_a_batch(model_path, tmp_path, normalize):
    """A batch carrying per-token message weights (#18 §1's column): N counts / sums role weight × message weight
    of every target, the message weights shifted with the targets."""
    built = trainer(str(model_path), str(tmp_path), {**VALUES, "wit_normalize": normalize})
    batches, expected = [], 0.0
    generator = torch.Generator().manual_seed(0)
    for sample in features(str(model_path)):
        batch = built.data_collator([sample])
        length = batch["input_ids"].shape[1]
        message = torch.rand(1, length, generator=generator) * 2  # weights in [0, 2), some set to 0 below
        message[0, ::3] = 0.0
        batch[MESSAGE_WEIGHTS_KEY] = message
        batches.append(batch)
        for t in range(1, length):  # by hand: token t is a target (of position t-1) with weight role × message
            w = ROLE_WEIGHT[int(batch[ROLES_KEY][0, t])] * float(message[0, t])
            expected += (w > 0) if normalize == "tokens" else w
    n = built._get_num_items_in_batch(batches, torch.device("cpu"))
    assert float(n) == pytest.approx(expected, rel=1e-7)  # the role weights are float32 (0.3 to 1e-8)
    without = built._get_num_items_in_batch(
        [{k: v for k, v in b.items() if k != MESSAGE_WEIGHTS_KEY} for b in batches], "cpu"
    )
    assert float(without) != pytest.approx(expected)  # the message weights changed N


def test_a_role_at_zero_for_part_of_the_run_is_trained_exactly_while_weighted(model_path, tmp_path):
    """Instruction weight 0 for the first step, 1 from the second (a step schedule): labels keep its tokens (it is
    trained at some step), N counts them only where the weight is > 0. With lr=0 the parameters stay put, so each
    logged loss is the float64 formula under that step's weights."""
    schedule = {"start": 0.0, "end": 1.0, "schedule": "step", "warmup": 0.5}
    values = {"wit_preset": "it", "wit_instruction_weight": schedule, "wit_normalize": "tokens"}
    built = trainer(
        str(model_path),
        str(tmp_path),
        values,
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=0.0,
        optim="sgd",
        logging_steps=1,
    )
    batch = built.data_collator(list(built.train_dataset))
    instruction = batch[ROLES_KEY] == Role.INSTRUCTION
    assert (batch["labels"][instruction] == batch["input_ids"][instruction]).all()  # not masked
    built.train()
    logged = [entry for entry in built.state.log_history if "loss" in entry]
    rows, vocab = features(str(model_path)), built.model.config.vocab_size
    it = {0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 0.0}
    expected = [reference_loss(tiny_model(vocab), rows, {**it, 2: weight}, "tokens").item() for weight in (0.0, 1.0)]
    assert abs(expected[0] - expected[1]) > 5e-4  # the logged loss (4 decimals) tells the two weightings apart
    for entry, instruction_weight, loss in zip(logged, (0.0, 1.0), expected):
        assert entry["wit/weight_instruction"] == instruction_weight
        assert entry["loss"] == pytest.approx(loss, abs=1e-4)


def test_rows_of_the_cases_differ_in_length(model_path):
    lengths = [len(sample["input_ids"]) for sample in features(str(model_path), ROWS)]
    assert len(set(lengths)) == len(lengths)
