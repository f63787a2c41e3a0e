"""Run records and ``wit compare``: what each run trained with, read back, and held-out per-role CE that equals an
independent float64 computation; bad runs are reported without losing the others."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from wit_plugin.evaluation.compare import CompareSettings, compare_runs
from wit_plugin.roles import Role, RoleWeights
from wit_plugin.runs import find_runs, read_record
from wit_plugin.tagging import RoleTagger

TRAIN = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a + b}."},
        ]
    }
    for a, b in [(2, 3), (4, 1), (7, 2), (5, 5)]
]
HELD_OUT = [
    {"messages": [{"role": "user", "content": "Name a colour of the sky."}, {"role": "assistant", "content": "Blue."}]},
    {"prompt": "Translate 'cat' into French:", "completion": " chat"},
    {"messages": [{"role": "user", "content": "Say hi in Spanish."}, {"role": "assistant", "content": "Hola."}]},
]


def train_run(model_path: Path, folder: Path, lora: bool = False, **weights) -> Path:
    """A one-step WITSFTTrainer run saved to ``folder`` (full weights, or a LoRA adapter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wit_plugin.trl import WITConfig, WITSFTTrainer

    args = WITConfig(
        output_dir=str(folder),
        max_steps=2,
        logging_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        **weights,
    )
    extra = {}
    if lora:
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    trainer = WITSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=args,
        train_dataset=Dataset.from_list(TRAIN),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        **extra,
    )
    trainer.train()
    trainer.save_model(str(folder))
    return folder


@pytest.fixture(scope="module")
def runs(model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    full = train_run(model_path, root / "sweep" / "full", wit_prompt_weight=0.3, wit_response_weight=0.9)
    adapter = train_run(model_path, root / "sweep" / "lora", lora=True, wit_preset="it")
    held_out = root / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT))
    return root, full, adapter, held_out


def test_every_run_records_what_it_trained_with(runs):
    root, full, adapter, _ = runs
    record = read_record(full)
    assert record["framework"] == "trl" and record["finished"] is True
    assert RoleWeights(**record["weights"]) == RoleWeights.from_options(
        {"wit_prompt_weight": 0.3, "wit_response_weight": 0.9}
    )
    assert record["options"]["wit_prompt_weight"] == 0.3 and record["loss_impl"] in ("chunked", "eager")
    assert record["versions"]["transformers"] and record["tagging"]["version"] == 2
    assert {"loss", "wit/loss_response", "wit/tokens_response"} <= set(record["train"])
    assert RoleWeights(**read_record(adapter)["weights"]) == RoleWeights.preset("it")
    assert find_runs([root / "sweep"]) == [full, adapter]  # a parent folder stands for the runs below it


def independent_role_losses(model, tokenizer, rows, tagging) -> dict[str, float]:
    """Per-role mean CE from one float64 forward per row (the first token of a row predicts nothing)."""
    reference = copy.deepcopy(model).double()
    sums: dict[Role, float] = {}
    counts: dict[Role, int] = {}
    for row in rows:
        tagged = RoleTagger(tokenizer, None, **tagging.get("options", {})).tag(row)  # its format detected
        ids = torch.tensor([tagged.input_ids])
        with torch.no_grad():
            logprobs = reference(ids).logits[0].log_softmax(-1)
        for position in range(1, len(tagged.input_ids)):
            role = Role(tagged.roles[position])
            sums[role] = sums.get(role, 0.0) - logprobs[position - 1, tagged.input_ids[position]].item()
            counts[role] = counts.get(role, 0) + 1
    return {f"loss_{role.label}": sums[role] / counts[role] for role in sums}


def test_held_out_role_losses_equal_an_independent_computation(runs):
    from wit_plugin.evaluation.models import load_model

    root, full, adapter, held_out = runs
    results = compare_runs([root / "sweep"], CompareSettings(eval_data=held_out))
    assert [entry["run"] for entry in results["runs"]] == [str(full), str(adapter)]
    for entry, folder in zip(results["runs"], (full, adapter)):
        record = read_record(folder)
        assert entry["weights"] == record["weights"] and "error" not in entry
        model, tokenizer = load_model(folder, "cpu")
        expected = independent_role_losses(model, tokenizer, HELD_OUT, record["tagging"])
        for key, value in expected.items():
            assert entry["eval"][key] == pytest.approx(value, abs=1e-4), key
        weights = RoleWeights(**record["weights"]).by_code()
        counts = {role: entry["eval"][f"tokens_{role.label}"] for role in Role if role is not Role.PAD}
        weighted = sum(weights[r] * entry["eval"].get(f"loss_{r.label}", 0) * counts[r] for r in counts)
        assert entry["eval"]["loss"] == pytest.approx(weighted / sum(counts[r] for r in counts if weights[r] > 0))
    assert results["runs"][0]["eval"] != results["runs"][1]["eval"]  # the adapter changed the model


def test_bad_runs_are_reported_and_do_not_lose_the_others(runs, tmp_path, model_path):
    _root, full, _, held_out = runs
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(full, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    results = compare_runs([not_a_run, no_tokenizer, full], CompareSettings(eval_data=held_out, base=str(model_path)))
    by_run = {entry["run"]: entry for entry in results["runs"]}
    assert "is not a wit_plugin run: it has no wit_run.json" in by_run[str(not_a_run)]["error"]
    assert f"{no_tokenizer} holds no tokenizer" in by_run[str(no_tokenizer)]["error"]
    assert "loss_response" in by_run[str(full)]["eval"]  # the good run still has its results
    assert results["runs"][0]["run"] == f"base: {model_path}" and "loss_response" in results["runs"][0]["eval"]


def test_a_malformed_eval_file_names_its_line(runs, tmp_path):
    _root, full, _, _ = runs
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": []}\n{"messages": [}\n')
    with pytest.raises(ValueError, match=f"{broken}:2: not valid JSON"):
        compare_runs([full], CompareSettings(eval_data=broken))
    bad_row = tmp_path / "bad_row.jsonl"
    bad_row.write_text(json.dumps({"messages": [{"role": "narrator", "content": "x"}]}) + "\n")
    (entry,) = compare_runs([full], CompareSettings(eval_data=bad_row))["runs"]
    assert f"{bad_row}:1: messages[0].role: unknown message role 'narrator'" in entry["error"]


def test_cli_table_results_and_plot(runs, tmp_path, capsys):
    from wit_plugin.cli import main

    root, _full, _adapter, held_out = runs
    out, picture = tmp_path / "results.json", tmp_path / "results.png"
    assert (
        main(["compare", str(root / "sweep"), "--eval-data", str(held_out), "--out", str(out), "--plot", str(picture)])
        == 0
    )
    shown = capsys.readouterr().out
    assert "eval response" in shown and "λp=0.3 λr=0.9" in shown
    results = json.loads(out.read_text())
    assert {"run", "weights", "train", "eval"} <= set(results["runs"][0])
    assert set(results["runs"][0]["weights"]) == {"template", "system", "instruction", "response", "eot", "reasoning"}
    assert picture.stat().st_size > 10_000
    assert main(["compare", str(tmp_path), "--eval-data", str(held_out)]) == 1  # a folder with no run in it
    assert f"{tmp_path} is not a wit_plugin run" in capsys.readouterr().out.replace("\n", "")


def test_cli_posix_psi_is_the_one_asked_for(model_path, tmp_path, capsys):
    from wit_plugin.cli import main
    from wit_plugin.evaluation.posix import evaluate_posix
    from wit_plugin.evaluation.posix.prompts import write_prompt_sets

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps(HELD_OUT[0]) + "\n")
    question = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Wht is 2 + 3?"}]]
    sets = write_prompt_sets(tmp_path / "sets.jsonl", [[*question, "Q: What is 2 + 3?\nA:"]])
    argv = ["compare", "--base", str(model_path), "--eval-data", str(held_out)]
    assert main([*argv, "--psi", "package"]) == 2  # nothing would use it
    assert "--psi chooses how POSIX is computed, and no POSIX is computed without --posix" in capsys.readouterr().err
    out = tmp_path / "results.json"
    assert main([*argv, "--posix", str(sets), "--psi", "package", "--out", str(out)]) == 0
    assert "package ψ" in capsys.readouterr().out
    results = json.loads(out.read_text())
    package, paper = (
        evaluate_posix(str(model_path), [[*question, "Q: What is 2 + 3?\nA:"]], psi_definition=definition).posix
        for definition in ("package", "paper")
    )
    assert results["posix_psi"] == "package" and results["runs"][0]["posix"] == pytest.approx(package, rel=1e-6)
    assert package != pytest.approx(paper, rel=1e-3)
