"""End to end: `axolotl train` with the plugin on the real SmolLM2-135M, with and without sample packing."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("axolotl")
from wit_plugin.demo.data import write_dataset
from wit_plugin.training.records import read_record

REPO = Path(__file__).resolve().parents[1]
AXOLOTL_TRAIN = [sys.executable, "-m", "axolotl.cli.main", "train"]  # this interpreter's own Axolotl
ROLE_KEYS = [
    f"wit/{kind}_{role}" for kind in ("loss", "tokens") for role in ("template", "instruction", "response", "eot")
]


def train(model_path: Path, tmp_path: Path, launcher: list[str], **overrides) -> tuple[list[dict], Path]:
    cfg = yaml.safe_load((REPO / "yaml_examples" / "wit_smollm2_cpu.yml").read_text())
    cfg.update(
        base_model=str(model_path),
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"),
        sequence_len=128,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=3,
        logging_steps=1,
    )
    data_count = overrides.pop("data_count", 48)
    transform = overrides.pop("transform_rows", None)  # rows → rows (e.g. weights added), written as the dataset
    dataset_keys = overrides.pop("dataset_keys", {})
    cfg.update(overrides)
    cfg = {key: value for key, value in cfg.items() if value is not None}  # None: leave the key out
    cfg["datasets"][0]["path"] = str(write_dataset(tmp_path / "data.jsonl", count=data_count, seed=1))
    cfg["datasets"][0].update(dataset_keys)
    if transform is not None:
        data = Path(cfg["datasets"][0]["path"])
        rows = transform([json.loads(line) for line in data.read_text().splitlines()])
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        # `axolotl train` starts `accelerate` from PATH: this interpreter's scripts first, whichever stack it is
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "AXOLOTL_DO_NOT_TRACK": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run(
        [*launcher, str(config)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    output = run.stdout + run.stderr
    (tmp_path / "train.log").write_text(output)
    logs = [ast.literal_eval(m) for m in re.findall(r"^\{'(?:eval_)?loss'.*\}$", output, flags=re.MULTILINE)]
    return logs, tmp_path / "out"


def check_run(logs: list[dict], out: Path, model_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    train_logs = [entry for entry in logs if "loss" in entry]
    assert len(train_logs) == 3
    for entry in train_logs:
        assert float(entry["loss"]) > 0
        assert all(key in entry for key in ROLE_KEYS), sorted(entry)
        assert int(entry["wit/tokens_response"]) > 0
    record = read_record(out)  # what the run trained with, for `wit compare`
    assert record["framework"] == "axolotl" and record["finished"] and record["tagging"]["format"] == "chat"
    assert "wit/loss_response" in record["train"]
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    changed = [not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters())]
    assert any(changed)


@pytest.mark.slow
def test_axolotl_train_with_sample_packing(model_path, tmp_path):
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--cpu",
        "-m",
        "axolotl.cli.train",
    ]
    logs, out = train(
        model_path, tmp_path, launcher, sample_packing=True, val_set_size=0.1, eval_strategy="steps", eval_steps=3
    )
    check_run(logs, out, model_path)
    evaluation = [entry for entry in logs if "eval_loss" in entry]
    assert evaluation and float(evaluation[0]["eval_wit/loss_response"]) > 0
    assert int(evaluation[0]["eval_wit/tokens_response"]) > 0


@pytest.mark.slow
def test_axolotl_train_without_sample_packing(model_path, tmp_path):
    prompts = tmp_path / "posix_sets.jsonl"
    prompts.write_text('{"prompts": ["What is the capital of France?", "Whats the capitol of France?"]}\n')
    logs, out = train(
        model_path,
        tmp_path,
        AXOLOTL_TRAIN,
        sample_packing=False,
        wit_preset="im",
        wit_prompt_weight=None,
        wit_response_weight=None,
        wit_posix_prompts=str(prompts),
        wit_posix_steps=3,
        wit_posix_max_new_tokens=8,
    )
    check_run(logs, out, model_path)
    assert float(logs[-1]["posix"]) >= 0  # computed at step 3, merged into that step's log line


@pytest.mark.slow
def test_chunked_loss_step_equals_eager_step_through_axolotl(model_path, tmp_path):
    steps = {}
    for impl in ("eager", "chunked"):  # the chunked run also checkpoints activations: same numbers
        logs, _ = train(
            model_path,
            tmp_path / impl,
            AXOLOTL_TRAIN,
            wit_loss_impl=impl,
            max_steps=1,
            sample_packing=True,
            seed=7,
            dataset_prepared_path=str(tmp_path / "prepared"),
            gradient_checkpointing=impl == "chunked",
        )
        steps[impl] = next(entry for entry in logs if "loss" in entry)
    for key in ("loss", "grad_norm", "wit/loss_instruction", "wit/loss_response"):  # printed to 4 digits
        assert float(steps["chunked"][key]) == pytest.approx(float(steps["eager"][key]), rel=1e-3), key
    assert steps["chunked"]["wit/tokens_template"] == steps["eager"]["wit/tokens_template"]


def _doubled(rows: list[dict]) -> list[dict]:
    return [{**row, "messages": [{**m, "loss_weight": 2.0} for m in row["messages"]]} for row in rows]


@pytest.mark.slow
def test_message_weights_of_a_datasets_own_key_scale_the_packed_loss_through_axolotl(model_path, tmp_path):
    """Every message weighted 2 under the dataset's own key (`wit_message_weight_field: loss_weight`): the same
    tokens are trained (N unchanged), so one packed step's loss is exactly twice the unweighted run's. Preset
    `it`: the template's default system prompt, which is no message's, is not trained."""
    steps = {}
    for name, transform in (("plain", None), ("doubled", _doubled)):
        logs, _ = train(
            model_path,
            tmp_path / name,
            AXOLOTL_TRAIN,
            max_steps=1,
            sample_packing=True,
            seed=7,
            data_count=24,
            wit_preset="it",
            wit_prompt_weight=None,
            wit_response_weight=None,
            transform_rows=transform,
            dataset_keys={"wit_message_weight_field": "loss_weight"},
        )
        steps[name] = next(entry for entry in logs if "loss" in entry)
    assert float(steps["doubled"]["loss"]) == pytest.approx(2 * float(steps["plain"]["loss"]), rel=1e-3)
    for key in ("wit/tokens_response", "wit/loss_response"):  # per-role metrics stay per role, unweighted
        assert float(steps["doubled"][key]) == pytest.approx(float(steps["plain"][key]), rel=1e-3), key


# --- packed rows kept apart: packed == unpacked, per role -------------------------------------------------------

PER_ROLE = [f"wit/loss_{role}" for role in ("template", "instruction", "response", "eot")]


@pytest.fixture(scope="module")
def one_step_runs(model_path, tmp_path_factory) -> dict[str, list[dict]]:
    """One training step over every training row (so its per-role losses are those of the same rows whatever the
    batching), then an evaluation at a learning rate too small to move the model: unpacked, packed with the
    shipped example's attention setting, and packed with no attention key (the plugin chooses)."""
    common = {
        "val_set_size": 0.25,
        "eval_strategy": "steps",
        "eval_steps": 1,
        "max_steps": 1,
        "gradient_accumulation_steps": 32,  # more micro-batches than the data has: the one step sees every row
        "learning_rate": 1e-9,
        "lr_scheduler": "constant",
        "seed": 3,
    }
    shipped = yaml.safe_load((REPO / "yaml_examples" / "wit_smollm2_cpu.yml").read_text())
    runs = {
        "unpacked": {"sample_packing": False, "attn_implementation": None},
        "packed as shipped": {"sample_packing": True, "attn_implementation": shipped.get("attn_implementation")},
        "packed, no attention key": {"sample_packing": True, "attn_implementation": None},
    }
    logs = {}
    for name, overrides in runs.items():
        folder = tmp_path_factory.mktemp(name.replace(" ", "_").replace(",", ""))
        logs[name], _ = train(model_path, folder, AXOLOTL_TRAIN, **common, **overrides, data_count=24)
    return logs


@pytest.mark.slow
@pytest.mark.parametrize("packed", ["packed as shipped", "packed, no attention key"])
def test_packed_rows_train_and_evaluate_as_unpacked(one_step_runs, packed):
    """Per-role losses of one training step and of the evaluation after it equal the unpacked run's: no packed
    sequence attends to another (Axolotl 0.19's default would pass its sequence-number mask as padding)."""
    reference, run = one_step_runs["unpacked"], one_step_runs[packed]
    for kind, prefix in (("loss", ""), ("eval_loss", "eval_")):
        expected = next(entry for entry in reference if kind in entry)
        actual = next(entry for entry in run if kind in entry)
        for key in PER_ROLE:
            count = f"{prefix}{key.replace('loss', 'tokens')}"
            assert int(actual[count]) == int(expected[count]), (count, actual, expected)  # the same tokens
            assert float(actual[prefix + key]) == pytest.approx(float(expected[prefix + key]), abs=2e-3), key
    assert not [entry for entry in run if "ppl" in entry or "eval_ppl" in entry]  # exp(weighted loss): not logged
