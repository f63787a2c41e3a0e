"""Run records and ``wit compare``: what each run trained with, read back, and held-out per-role CE that equals an
independent float64 computation; bad runs are reported without losing the others."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from wit_plugin.evaluation.compare import CompareSettings, compare_runs
from wit_plugin.roles import Role, RoleWeights
from wit_plugin.tagging import TAGGING_VERSION, RoleTagger
from wit_plugin.training.records import find_runs, read_record

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

    from wit_plugin import WITConfig, WITSFTTrainer

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
    assert record["versions"]["transformers"] and record["tagging"]["version"] == TAGGING_VERSION
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
        assert "loss" not in entry["eval"]  # a WIT loss under each run's own weights is no ranking: not reported
    assert results["runs"][0]["eval"] != results["runs"][1]["eval"]  # the adapter changed the model


def test_bad_runs_are_reported_and_do_not_lose_the_others(runs, tmp_path, model_path):
    _root, full, _, held_out = runs
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(full, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    settings = CompareSettings(eval_data=held_out, references=[str(model_path)])
    results = compare_runs([not_a_run, no_tokenizer, full], settings)
    by_run = {entry["run"]: entry for entry in results["runs"]}
    assert "is not a wit_plugin run: it has no wit_run.json" in by_run[str(not_a_run)]["error"]
    assert f"{no_tokenizer} holds no tokenizer" in by_run[str(no_tokenizer)]["error"]
    assert "loss_response" in by_run[str(full)]["eval"]  # the good run still has its results
    assert results["runs"][0]["run"] == str(model_path) and "loss_response" in results["runs"][0]["eval"]
    assert results["runs"][0]["kind"] == "reference"


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
    assert f"[1] {tmp_path}: RunError: {tmp_path} is not a wit_plugin run" in capsys.readouterr().out


# --- a model's numbers depend only on the model, the eval data and the flags; nothing is lost -------------------


def _short_run(full: Path, folder: Path, **record_changes) -> Path:
    """A copy of ``full`` (its files linked, not copied) whose run record says something else, e.g. a short
    training ``sequence_len``."""
    folder.mkdir()
    for path in full.iterdir():
        if path.name != "wit_run.json":
            (folder / path.name).symlink_to(path)
    record = {**read_record(full), **record_changes}
    (folder / "wit_run.json").write_text(json.dumps(record))
    return folder


def _long_held_out(path: Path) -> Path:
    rows = [*HELD_OUT, {"prompt": "Count: " + " ".join(str(n) for n in range(40)), "completion": " 40"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_models_row_does_not_depend_on_its_neighbours(runs, tmp_path, model_path, tokenizer):
    """The reference row is the same alone and beside a run trained with a short sequence_len (which used to cut
    the reference's rows too); one truncation rule for all, shown as rows_truncated; --max-length cuts all."""
    _root, full, _, _ = runs
    short = _short_run(full, tmp_path / "short", sequence_len=16)
    held_out = _long_held_out(tmp_path / "held_out.jsonl")
    alone = compare_runs([], CompareSettings(eval_data=held_out, references=[str(model_path)]))["runs"][0]
    beside = compare_runs([short], CompareSettings(eval_data=held_out, references=[str(model_path)]))["runs"]
    assert beside[0]["eval"] == alone["eval"] and alone["eval"]["rows_truncated"] == 0
    assert beside[1]["eval"]["rows_truncated"] == 0 and beside[1]["eval"]["cut_at"] == alone["eval"]["cut_at"] > 1000
    cut = compare_runs([short], CompareSettings(eval_data=held_out, references=[str(model_path)], max_length=64))
    longer = sum(len(RoleTagger(tokenizer, None).tag(json.loads(line)).input_ids) > 64 for line in held_out.open())
    assert 1 <= longer < 4 and [entry["eval"]["rows_truncated"] for entry in cut["runs"]] == [longer, longer]
    assert all(entry["eval"]["cut_at"] == 64 for entry in cut["runs"])
    assert cut["runs"][0]["eval"]["tokens_response"] < alone["eval"]["tokens_response"]


def test_plain_model_folders_are_reference_rows(runs, tmp_path, model_path, capsys):
    """Any plain model folder (positional or --base, several) is a reference row; the same weights give the same
    row wherever they come from."""
    from wit_plugin.cli import main

    _root, full, _, held_out = runs
    copy_of_base = tmp_path / "copy_of_base"
    copy_of_base.mkdir()
    for path in model_path.iterdir():
        (copy_of_base / path.name).symlink_to(path)
    out = tmp_path / "results.json"
    argv = ["compare", str(copy_of_base), str(full), "--base", str(model_path), "--eval-data", str(held_out)]
    assert main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["runs"]
    assert [(r["run"], r["kind"]) for r in rows] == [
        (str(model_path), "reference"),
        (str(copy_of_base), "reference"),
        (str(full), "run"),
    ]
    assert rows[0]["eval"] == rows[1]["eval"] and rows[2]["eval"] != rows[0]["eval"]
    shown = capsys.readouterr().out
    assert "reference" in shown and "WIT loss" not in shown and "rows cut" in shown


def test_table_json_and_plot_show_the_same_accuracy_in_percent(runs, tmp_path, model_path, capsys):
    """Cross-task accuracy per condition, in %, is the same number in the JSON, the table and the plot (which
    used to average the conditions); outputs go into folders that did not exist."""
    from tests.test_crosstask import POOL, TARGETS, write
    from wit_plugin.cli import main
    from wit_plugin.cli.compare import draw

    _root, full, _, held_out = runs
    pool, targets = write(tmp_path / "pool.jsonl", POOL), write(tmp_path / "targets.jsonl", TARGETS[:3])
    out, picture = tmp_path / "new" / "results.json", tmp_path / "other" / "deeper" / "results.png"
    argv = ["compare", str(full), "--base", str(model_path), "--eval-data", str(held_out), "--pool", str(pool)]
    argv += ["--targets", str(targets), "--conditions", "zero,cross", "--select", "lexical"]
    assert main([*argv, "--out", str(out), "--plot", str(picture)]) == 0
    shown = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert picture.stat().st_size > 10_000
    figure = draw(results)
    axis = figure.axes[-1]
    assert "%" in axis.get_ylabel()
    for condition in ("zero", "cross"):
        values = [entry["crosstask_pct"][condition] for entry in results["runs"]]
        assert all(0 <= value <= 100 for value in values)
        for value in values:
            assert f" {value:.1f} " in shown  # the table's cell
        (points,) = [c for c in axis.collections if c.get_gid() == f"acc {condition}"]  # the trained run
        assert points.get_offsets()[:, 1].tolist() == pytest.approx([values[1]])
        (line,) = [x for x in axis.lines if x.get_gid() == f"acc {condition}"]  # the reference
        assert line.get_ydata()[0] == pytest.approx(values[0])
    assert "acc zero %" in shown and "acc cross %" in shown


def test_a_failed_row_says_why_in_a_note_and_leaves_the_others_readable(runs, tmp_path, capsys):
    from wit_plugin.cli import main

    _root, full, _, held_out = runs
    unfinished = tmp_path / ("an_unfinished_run_with_a_long_name_" * 3)
    unfinished.mkdir()
    (unfinished / "wit_run.json").write_text(json.dumps({**read_record(full), "finished": False}))
    stopped = _short_run(full, tmp_path / "stopped", finished=False)  # a model saved, training not finished
    assert main(["compare", str(unfinished), str(stopped), str(full), "--eval-data", str(held_out)]) == 1
    shown = capsys.readouterr().out
    assert "…" not in shown  # no column squeezed
    (good,) = [line for line in shown.splitlines() if "λp=0.3 λr=0.9" in line and "failed" not in line]
    assert [line for line in shown.splitlines() if "failed [1]" in line]
    assert len(re.findall(r" \d+\.\d{4} ", good)) == 6  # train and eval CE per role, all four decimals
    assert f"[1] {unfinished}: RunError: {unfinished} holds no saved model" in shown
    (noted,) = [line for line in shown.splitlines() if "note [2]" in line]
    assert len(re.findall(r" \d+\.\d{4} ", noted)) == 6  # evaluated, with its caveat
    assert f"[2] {stopped}: training did not finish: the model saved at step 2" in shown
    assert "1 of 3 rows could not be evaluated" in shown


def test_interrupted_compare_keeps_finished_rows_and_resumes(runs, tmp_path, model_path, monkeypatch, capsys):
    """Each row is saved as it completes; Ctrl-C exits 130 with one line; the same command evaluates only what is
    missing; other flags or --force recompute."""
    from wit_plugin.cli import main
    from wit_plugin.evaluation import compare

    _root, full, adapter, held_out = runs
    real, calls = compare.evaluate_model, []

    def counting(name, *args, **kwargs):
        calls.append(name)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(compare, "evaluate_model", counting)
    out = tmp_path / "results.json"
    argv = ["compare", str(full), str(adapter), "--base", str(model_path), "--eval-data", str(held_out)]
    argv += ["--out", str(out)]
    interrupt_at = 3
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert (
        "Traceback" not in err
        and err.splitlines()[-1]
        == f"wit compare: interrupted; what finished is saved in {out}: the same command resumes from it"
    )
    saved = json.loads(out.read_text())
    assert [r["run"] for r in saved["runs"]] == [str(model_path), str(full)] and not saved["resume"]["complete"]
    interrupt_at, calls[:] = None, []
    assert main(argv) == 0
    assert calls == [str(adapter)]  # only the row that had not finished
    final = json.loads(out.read_text())
    assert final["resume"]["complete"] and final["runs"][:2] == saved["runs"]
    calls.clear()
    assert main([*argv, "--force"]) == 0 and len(calls) == 3
    calls.clear()
    assert main([*argv, "--max-length", "8"]) == 0 and len(calls) == 3  # other flags: other numbers
    assert {r["eval"]["cut_at"] for r in json.loads(out.read_text())["runs"]} == {8}


# ChatML without SmolLM2's default system prompt: a second dataset trained under another template.
PLAIN_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_held_out_rows_are_tagged_by_the_dataset_they_look_like(tokenizer, tmp_path):
    """Each training dataset's chat template is recorded; a held-out row goes through the tagger of the dataset
    whose shape it has. An older record (one ``tagging``) still reads."""
    from wit_plugin.evaluation.compare import _tag_rows
    from wit_plugin.training.records import dataset_taggings

    first = {"format": "chat", "options": {"chat_template": tokenizer.chat_template}}
    second = {"format": "chat", "options": {"chat_template": PLAIN_CHATML, "field_messages": "conversation"}}
    record = {"tagging": {"version": 2, **first}, "dataset_taggings": [first, second]}
    turns = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]
    rows = [(1, {"messages": turns}), (2, {"conversation": turns})]
    tagged = _tag_rows(tokenizer, dataset_taggings(record), rows, tmp_path / "held.jsonl")
    expected = [
        RoleTagger(tokenizer, "chat", **tagging["options"]).tag(row) for tagging, (_, row) in zip((first, second), rows)
    ]
    assert [t.input_ids for t in tagged] == [e.input_ids for e in expected]
    assert len(tagged[0].input_ids) > len(tagged[1].input_ids) + 10  # SmolLM2's template adds a system prompt
    assert dataset_taggings({"tagging": {"version": 2, **first}}) == [{"version": 2, **first}]


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
