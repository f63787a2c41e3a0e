"""Cross-task evaluation on small tasks made here: data checks, demo rules, exact option scores, the trace."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from wit_plugin.evaluation.crosstask import CrossTaskSettings, evaluate_crosstask, load_items
from wit_plugin.evaluation.crosstask.prompts import normalise
from wit_plugin.evaluation.crosstask.select import tfidf_cosine
from wit_plugin.evaluation.crosstask.tasks import TaskFileError
from wit_plugin.evaluation.stats import bootstrap_ci, spearman

CAPITALS = "Name the capital city of the country."
OPPOSITES = "Give the word with the opposite meaning."
SENTIMENT = "Say whether the review is positive or negative."
SUMS = "Add the two numbers."


def row(task, text, label, options=None, definition=None, **extra):
    data = {"task": task, "input": text, "label": label, **extra}
    if options is not None:
        data["options"] = options
    if definition is not None:
        data["definition"] = definition
    return data


POOL = [
    row("capitals", "Country: Italy\nCapital:", "Rome", ["Rome", "Paris", "Madrid"], CAPITALS),
    row("capitals", "Country: Spain\nCapital:", "Madrid", ["Rome", "Paris", "Madrid"]),
    row("capitals", "Country: Japan\nCapital:", "Tokyo", ["Tokyo", "Seoul", "Beijing"]),
    row("opposites", "Word: hot\nOpposite:", "cold", ["cold", "warm"], OPPOSITES),
    row("opposites", "Word: up\nOpposite:", "down", ["down", "high"]),
    row("opposites", "Word: day\nOpposite:", "night", ["night", "noon"]),
    row("sentiment", "Review: A wonderful, moving film.\nSentiment:", "positive", ["positive", "negative"], SENTIMENT),
    row("sentiment", "Review: Dull and far too long.\nSentiment:", "negative", ["positive", "negative"]),
    row("sums", "2 + 2 =", "4", definition=SUMS),
    row("sums", "5 + 1 =", "6"),
]
TARGETS = [
    row("capitals", "Country: France\nCapital:", "Paris", ["Rome", "Paris", "Madrid"], CAPITALS),
    row("capitals", "Country: Germany\nCapital:", "Berlin", ["Berlin", "Vienna", "Oslo"]),
    row("opposites", "Word: big\nOpposite:", "small", ["small", "tall"], OPPOSITES),
    row("sentiment", "Review: I loved every minute.\nSentiment:", "positive", ["positive", "negative"], SENTIMENT),
    row("sums", "3 + 4 =", "7", definition=SUMS),
    row("colours", "The colour of snow is", "white", ["white", "green", "red"], "Name the colour."),
]
ALL = "zero,cross,mixed,random,gold,pseudo"


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    return write(folder / "pool.jsonl", POOL), write(folder / "targets.jsonl", TARGETS)


@pytest.fixture(scope="module")
def evaluated(model, tokenizer, files):
    pool, targets = (load_items(path) for path in files)
    settings = CrossTaskSettings.from_options({"wit_crosstask_conditions": ALL, "wit_crosstask_shots": 2})
    return pool, targets, settings, evaluate_crosstask(model, tokenizer, pool, targets, settings)


# --- task files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (row("t", "x", "c", ["a", "b"]), "field 'label' 'c' is not among the options"),
        (row("t", "x", "a", ["a"]), "field 'options' needs at least 2 options, got 1"),
        (row("t", "  ", "a"), "field 'input' is empty"),
        ({"input": "x", "label": "a"}, "field 'task' is missing"),
        ({"task": None, "input": "x", "label": "a"}, "field 'task' must be a string, got NoneType"),
        ({**row("t", "x", "a"), "answer": "a"}, "unknown field\\(s\\) \\['answer'\\]"),
        (row("t", "x", 3), "field 'label' must be a string, got int"),
    ],
)
def test_bad_rows_name_their_file_line_and_field(tmp_path, bad, message):
    path = write(tmp_path / "tasks.jsonl", [row("t", "fine", "a", ["a", "b"]), bad])
    with pytest.raises(TaskFileError, match=f"^{path}:2: {message}"):
        load_items(path)


def test_ids_default_to_file_line_and_must_be_unique(tmp_path):
    path = write(tmp_path / "tasks.jsonl", [row("t", "a", "x"), row("t", "b", "y", id="7")])
    items = load_items(path)
    assert [item.id for item in items] == ["tasks.jsonl:1", "7"]  # the same wherever the file is read from
    assert [item.where for item in items] == [f"{path}:1", f"{path}:2"]
    write(path, [row("t", "a", "x", id="7"), row("t", "b", "y", id="7")])
    with pytest.raises(TaskFileError, match=f"{path}:2: field 'id' '7' is used again \\(first at {path}:1\\)"):
        load_items(path)
    path.write_text('{"task": "t"\n')
    with pytest.raises(ValueError, match=f"{path}:1: not valid JSON"):
        load_items(path)


def test_options_listed_twice_are_resolved_by_role_not_fatal(model_path, tmp_path, capsys, caplog):
    """Real CommonsenseQA rows list an option twice. A wrong option listed twice is kept once (pool and targets);
    a target whose gold answer is listed twice is skipped; a pool row keeps its keyed label as a demo. Every
    change is counted and named by file:line in the notes, on screen and in the trace."""
    from wit_plugin.cli import main
    from wit_plugin.evaluation.crosstask.evaluate import CrossTaskEvaluator
    from wit_plugin.evaluation.crosstask.tasks import usable_rows

    pool = write(
        tmp_path / "pool.jsonl",
        [
            *POOL[:4],
            row("capitals", "Country: Peru\nCapital:", "Lima", ["Lima", "Lima", "Quito"]),  # gold listed twice
            row("opposites", "Word: wet\nOpposite:", "dry", ["dry", "damp", "damp"]),
        ],
    )
    targets = write(
        tmp_path / "targets.jsonl",
        [
            TARGETS[0],
            row("capitals", "Country: Chile\nCapital:", "Santiago", ["Santiago", "Lima", "Santiago"]),  # skipped
            row("opposites", "Word: new\nOpposite:", "old", ["old", "young", "young", "old2"]),  # kept once
        ],
    )
    loaded_pool, loaded_targets = load_items(pool), load_items(targets)  # loading never aborts on it
    kept, notes = usable_rows(loaded_pool, "pool")
    assert [item.options for item in kept[4:]] == [("Lima", "Quito"), ("dry", "damp")]
    assert notes == [f"pool: 2 row(s) list an option twice, kept once: {pool}:5, {pool}:6"]
    kept, notes = usable_rows(loaded_targets, "targets")
    assert [item.where for item in kept] == [f"{targets}:1", f"{targets}:3"]
    assert kept[1].options == ("old", "young", "old2")
    assert notes == [
        f"targets: 1 row(s) list an option twice, kept once: {targets}:3",
        f"targets: 1 row(s) skipped, their gold answer also listed as a wrong option: {targets}:2",
    ]
    assert usable_rows(kept, "targets") == (kept, [])  # nothing left to resolve
    with caplog.at_level(logging.WARNING, logger="wit_plugin"):  # training-time evaluation: one log line each
        evaluator = CrossTaskEvaluator(pool, targets)
    assert [r.getMessage() for r in caplog.records] == [
        f"cross-task evaluation: {note}" for note in [*usable_rows(loaded_pool, "pool")[1], *notes]
    ]
    assert len(evaluator.targets) == 2 and evaluator.pool[4].options == ("Lima", "Quito")

    out = tmp_path / "trace.json"
    argv = ["crosstask", "--model", str(model_path), "--pool", str(pool), "--targets", str(targets)]
    assert main([*argv, "--conditions", "zero,gold", "--select", "lexical", "--out", str(out), "--device", "cpu"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    trace = json.loads(out.read_text())
    for note in [*usable_rows(loaded_pool, "pool")[1], *notes]:
        assert note in trace["notes"] and note in shown
    assert {entry["id"] for entry in trace["items"]} == {"targets.jsonl:1", "targets.jsonl:3"}
    assert {tuple(entry["options"]) for entry in trace["items"] if entry["id"] == "targets.jsonl:3"} == {
        ("old", "young", "old2")
    }


def test_lexical_selection_embeds_nothing_unless_the_activation_analysis_is_asked_for(
    model, tokenizer, model_path, files, monkeypatch, capsys
):
    from wit_plugin.evaluation.crosstask import evaluate as module

    embedded = []
    real = module.embed_inputs
    monkeypatch.setattr(
        module, "embed_inputs", lambda m, t, texts, *a, **k: embedded.append(len(texts)) or real(m, t, texts, *a, **k)
    )
    pool, targets = (load_items(path) for path in files)
    settings = CrossTaskSettings.from_options(
        {"wit_crosstask_conditions": "zero,cross", "wit_crosstask_select": "lexical"}
    )
    result = evaluate_crosstask(model, tokenizer, pool, targets[:2], settings)
    assert embedded == [] and result.activation == []
    assert any(note.startswith("activation analysis not run: lexical selection") for note in result.notes)
    asked = evaluate_crosstask(model, tokenizer, pool, targets[:2], settings, activations=True)
    assert embedded == [len(pool), 2] and len(asked.activation) == 31
    assert [e.prediction for e in asked.items] == [e.prediction for e in result.items]  # the same demos
    embedded.clear()
    similar = CrossTaskSettings.from_options({"wit_crosstask_conditions": "zero,cross"})
    assert len(evaluate_crosstask(model, tokenizer, pool, targets[:2], similar).activation) == 31  # states there anyway
    assert evaluate_crosstask(model, tokenizer, pool, targets[:2], settings, activations=False).activation == []
    from wit_plugin.cli import main

    argv = [
        "crosstask",
        "--model",
        str(model_path),
        "--pool",
        str(files[0]),
        "--targets",
        str(files[1]),
        "--limit",
        "1",
    ]
    assert main([*argv, "--select", "lexical", "--device", "cpu"]) == 0
    assert "activation analysis not run" in " ".join(capsys.readouterr().out.split())
    assert main([*argv, "--select", "lexical", "--device", "cpu", "--activations"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # the analysis ran: its table, or why it has no table
    assert "activation analysis not run" not in shown
    assert "hidden-state cosine, per layer" in shown or "per-layer table skipped" in shown


# --- demos -----------------------------------------------------------------------------------------------------


def test_demo_rules_hold_for_every_item(evaluated, tokenizer):
    pool, targets, _, result = evaluated
    by_id = {item.id: item for item in [*pool, *targets]}
    for entry in result.to_dict()["items"]:
        target = by_id[entry["id"]]
        prompt = tokenizer.decode(entry["prompt_ids"])
        assert target.input in prompt and prompt.rstrip().endswith(target.input.rstrip())
        for demo in entry["demos"]:
            shown = by_id[demo["id"]]
            assert not shown.same_item(target)  # never its own demo
            assert f"{shown.input} " in prompt  # every demo's text is in the prompt
            if entry["condition"] in ("cross", "mixed", "random"):
                assert demo["task"] != target.task  # cross-task demos never come from the target's task
            if entry["condition"] in ("gold", "pseudo"):
                assert demo["task"] == target.task
        expected = {"zero": 0, "mixed": 2, "random": 2}.get(entry["condition"])
        if expected is not None:
            assert len(entry["demos"]) == expected
        if entry["condition"] == "cross":
            assert len({d["task"] for d in entry["demos"]}) == 1  # one source task per prompt
        if entry["condition"] == "mixed":
            assert len({d["task"] for d in entry["demos"]}) == 2  # one demo from each of K tasks
    gold = [e for e in result.items if e.condition == "gold"]
    assert all(f"{d.item.input} {d.item.label}\n" in tokenizer.decode(e.prompt_ids) for e in gold for d in e.demos)


def test_cross_runs_every_source_task_and_fills_the_gain_matrix(evaluated):
    _, targets, _, result = evaluated
    cross = [e for e in result.items if e.condition == "cross"]
    for target in targets:
        sources = {e.source for e in cross if e.item.id == target.id}
        assert sources == {"capitals", "opposites", "sentiment", "sums"} - {target.task}
    matrix = result.gain_matrix
    zero = {r["task"]: r["accuracy"] for r in result.results if r["condition"] == "zero"}
    for i, source in enumerate(matrix["sources"]):
        for j, task in enumerate(matrix["targets"]):
            cells = [float(e.correct) for e in cross if e.source == source and e.item.task == task]
            if cells:
                assert matrix["accuracy"][i][j] == pytest.approx(np.mean(cells))
                assert matrix["gain"][i][j] == pytest.approx(np.mean(cells) - zero[task])
    assert {r["layer"] for r in result.activation} == set(range(31))  # SmolLM2: embeddings + 30 layers


def test_pseudo_labels_are_the_cross_task_majority_vote(evaluated):
    _, _, _, result = evaluated
    assert result.pseudo_labels
    for record in result.pseudo_labels:
        votes = list(record["votes"].values())
        top = max(votes.count(v) for v in votes)
        assert votes.count(record["pseudo_label"]) == top
        assert record["correct"] == (record["pseudo_label"] == record["label"])
    labels = {r["id"]: r["pseudo_label"] for r in result.pseudo_labels}
    for entry in result.items:
        if entry.condition == "pseudo":
            assert all(demo.label == labels[demo.item.id] for demo in entry.demos)
    assert "colours: no pool rows of this task, so no gold/pseudo in-task demos" in result.notes
    assert not any(e.item.task == "colours" and e.condition in ("gold", "pseudo") for e in result.items)


# --- scoring ---------------------------------------------------------------------------------------------------


def test_option_logprobs_equal_a_one_at_a_time_float64_computation(evaluated, model):
    _, _, settings, result = evaluated
    reference = copy.deepcopy(model).double().eval()
    checked = 0
    for entry in result.items:
        if entry.option_ids is None or checked >= 6:
            continue
        for ids, value in zip(entry.option_ids, entry.option_logprobs):
            sequence = torch.tensor([list(entry.prompt_ids) + list(ids)])
            with torch.no_grad():  # the logits of the positions that predict the option's tokens
                logits = reference(sequence, logits_to_keep=len(ids) + 1).logits[0, :-1]
            logprobs = torch.log_softmax(logits, dim=-1)
            expected = sum(logprobs[k, token].item() for k, token in enumerate(ids))
            assert value == pytest.approx(expected, abs=1e-4)
        scores = [v / len(ids) for v, ids in zip(entry.option_logprobs, entry.option_ids)]  # mean: the default
        assert entry.prediction == entry.item.options[int(np.argmax(scores))]
        checked += 1
    assert checked == 6 and settings.scoring == "mean"


def test_sum_scoring_picks_by_total_log_probability(model, tokenizer, files):
    pool, targets = (load_items(path) for path in files)
    settings = CrossTaskSettings.from_options({"wit_crosstask_conditions": "zero", "wit_crosstask_scoring": "sum"})
    result = evaluate_crosstask(model, tokenizer, pool, targets, settings)
    assert result.to_dict()["scoring"] == "sum"
    for entry in result.items:
        if entry.option_logprobs is not None:
            assert entry.prediction == entry.item.options[int(np.argmax(entry.option_logprobs))]


def test_items_without_options_are_generated_and_matched_exactly(evaluated):
    _, _, _, result = evaluated
    generated = [e for e in result.items if e.item.options is None]
    assert generated and all(e.generated is not None and e.option_logprobs is None for e in generated)
    assert all(e.prediction == normalise(e.generated) for e in generated)
    assert normalise("  Paris. It is") == "paris" and normalise("Seven\nmore") == "seven" and normalise("a-b") == "a"


def test_results_trace_and_determinism(evaluated, model, tokenizer, tmp_path):
    pool, targets, settings, result = evaluated
    trace = json.loads(result.write_trace(tmp_path / "trace.json").read_text())
    assert trace["scoring"] == "mean"
    for entry in trace["results"]:
        assert {"task", "condition", "accuracy", "n", "ci95"} <= set(entry)
        low, high = entry["ci95"]
        assert low <= entry["accuracy"] <= high
    item_keys = {"task", "id", "condition", "prompt_ids", "options", "option_ids", "option_logprobs"}
    item_keys |= {"prediction", "label", "demos"}
    assert all(item_keys <= set(entry) for entry in trace["items"])
    for entry in trace["results"]:  # accuracy is the mean of the items' correctness
        items = [e for e in result.items if e.item.task == entry["task"] and e.condition == entry["condition"]]
        assert entry["n"] == len(items) and entry["accuracy"] == pytest.approx(np.mean([e.correct for e in items]))
    again = evaluate_crosstask(model, tokenizer, pool, targets, settings).to_dict()
    first = result.to_dict()
    first.pop("work"), again.pop("work")
    assert again == first  # same seed, same everything


def test_selection_methods(model, tokenizer, files):
    pool, targets = (load_items(path) for path in files)
    scores = tfidf_cosine(["Country: France\nCapital:"], [p.input for p in pool])
    assert int(np.argmax(scores[0])) in (0, 1, 2)  # shares "country" and "capital" with the capitals rows
    picks = {}
    for select in ("similar", "lexical", "random"):
        settings = CrossTaskSettings.from_options(
            {"wit_crosstask_conditions": "cross", "wit_crosstask_select": select, "wit_crosstask_seed": 3}
        )
        result = evaluate_crosstask(model, tokenizer, pool, targets[:1], settings)
        picks[select] = [d.item.id for e in result.items for d in e.demos]
    again = CrossTaskSettings.from_options(
        {"wit_crosstask_conditions": "cross", "wit_crosstask_select": "random", "wit_crosstask_seed": 4}
    )
    other = [d.item.id for e in evaluate_crosstask(model, tokenizer, pool, targets[:1], again).items for d in e.demos]
    assert len(picks["random"]) == len(other)


@pytest.mark.parametrize("select", ["nearest", None])
def test_selection_outside_the_options_choices_names_the_option_and_its_choices(select):
    """The allowed selections are the ``wit_crosstask_select`` option's choices, not a list of its own."""
    from wit_plugin.evaluation.crosstask.select import selection_scores
    from wit_plugin.options import OPTION_BY_NAME, OptionError

    with pytest.raises(OptionError, match="wit_crosstask_select") as error:
        selection_scores(select, ["a query"], ["a candidate"], seed=0)
    assert all(choice in str(error.value) for choice in OPTION_BY_NAME["wit_crosstask_select"].choices)


def test_similar_selection_uses_the_models_mean_pooled_final_hidden_states(model, tokenizer):
    from wit_plugin.evaluation.crosstask.select import embed_inputs

    texts = ["Country: Italy\nCapital:", "Word: hot"]
    states = embed_inputs(model, tokenizer, texts, batch_size=2)
    for index, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(states.layer(-1)[index], hidden.mean(0).numpy(), atol=1e-4)


def test_statistics():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    d = np.array([1, 2, 3, 4, 5]) - np.array([2, 1, 4, 3, 5])
    assert spearman(x, y) == pytest.approx(1 - 6 * (d**2).sum() / (5 * (25 - 1)))
    assert spearman([1, 2], [3, 4]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    low, high = bootstrap_ci([0, 1, 1, 0, 1], seed=0)
    assert 0 <= low <= 0.6 <= high <= 1 and bootstrap_ci([0, 1, 1, 0, 1], seed=0) == (low, high)


# --- POSIX with exemplars, training callbacks, the command line -------------------------------------------------


def test_posix_with_exemplar_blocks(model, tokenizer, files):
    from wit_plugin.evaluation.posix import POSIXSettings, evaluate_posix
    from wit_plugin.evaluation.posix.exemplars import evaluate_posix_with_exemplars, with_block

    pool = load_items(files[0])
    sets = [
        ["Country: Norway\nCapital:", "Q: Country: Norway\nCapital:\nA:"],
        [[{"role": "user", "content": "Word: fast\nOpposite:"}], "Word: fast\nOpposite:"],
        ["Tell me a fact.", "Tell me one fact."],
    ]
    outcome = evaluate_posix_with_exemplars(
        model,
        tokenizer,
        sets,
        ["capitals", "opposites", None],
        pool,
        ("none", "cross", "in-task"),
        1,
        "lexical",
        0,
        POSIXSettings(max_new_tokens=3, batch_size=8),
    )
    assert outcome.evaluated == {"none": [0, 1, 2], "cross": [0, 1, 2], "in-task": [0, 1]}
    assert "in-task: 1 set(s) without a task that has pool rows were skipped" in outcome.notes
    by_id = {item.id: item for item in pool}
    for index, demos in zip(outcome.evaluated["cross"], outcome.demos["cross"]):
        assert all(by_id[d["id"]].task != ["capitals", "opposites", None][index] for d in demos)
    assert [by_id[d["id"]].task for (d,) in outcome.demos["in-task"]] == ["capitals", "opposites"]
    (demo,) = outcome.demos["in-task"][0]
    shown = by_id[demo["id"]]
    block = f"Definition: {shown.definition}\n{shown.input} {shown.label}\n"
    expected = evaluate_posix(model, [[with_block(p, block) for p in sets[0]]], tokenizer, 3, 8)
    assert outcome.results["in-task"].sets[0].psi == pytest.approx(expected.sets[0].psi, abs=1e-4)  # other batch
    assert outcome.results["in-task"].sets[0].prompts[1].startswith(block)  # the same block before every prompt
    chat = outcome.results["in-task"].sets[1].prompts[0]
    assert chat[0]["content"].startswith("Definition: " + OPPOSITES)  # inside the first user message


def test_crosstask_callback_logs_accuracy_per_task_during_training(model_path, files, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from wit_plugin.evaluation.callback import CrossTaskCallback, evaluation_callbacks

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoded = tokenizer(["The sky is blue.", "Water is wet."], padding="max_length", max_length=8)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": i}
        for i, m in zip(encoded["input_ids"], encoded["attention_mask"])
    ]
    values = {
        "wit_crosstask_pool": str(files[0]),
        "wit_crosstask_targets": str(files[1]),
        "wit_crosstask_steps": 1,
        "wit_crosstask_conditions": "zero",
        "wit_crosstask_limit": 1,
    }
    (callback,) = evaluation_callbacks(values)
    assert isinstance(callback, CrossTaskCallback) and callback.every_n_steps == 1
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    (logged,) = [entry for entry in trainer.state.log_history if "crosstask/zero" in entry]
    assert set(logged) >= {f"crosstask/{task}/zero" for task in ("capitals", "opposites", "sentiment", "sums")}
    assert logged["crosstask/capitals/zero"] == callback.last_result.accuracy("capitals", "zero")


def test_trl_config_adds_the_evaluation_callbacks(model_path, files, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wit_plugin import WITConfig, WITSFTTrainer
    from wit_plugin.evaluation.callback import CrossTaskCallback

    args = WITConfig(
        output_dir=str(tmp_path),
        bf16=False,
        report_to="none",
        wit_crosstask_pool=str(files[0]),
        wit_crosstask_targets=str(files[1]),
        wit_crosstask_steps=7,
    )
    rows = Dataset.from_list([{"prompt": "2 + 2 =", "completion": " 4"}])
    trainer = WITSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=args,
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, CrossTaskCallback)]
    assert callback.every_n_steps == 7


def test_cli_writes_tables_trace_and_plot(model_path, files, tmp_path, capsys):
    from wit_plugin.cli import main

    out, picture = tmp_path / "trace.json", tmp_path / "gain.png"
    command = ["crosstask", "--model", str(model_path), "--pool", str(files[0]), "--targets", str(files[1])]
    assert (
        main([*command, "--conditions", "zero,cross", "--limit", "1", "--out", str(out), "--plot", str(picture)]) == 0
    )
    shown = capsys.readouterr().out
    assert "cross-task accuracy" in shown and "gain over zero-shot by source task" in shown
    trace = json.loads(out.read_text())
    assert {entry["condition"] for entry in trace["items"]} == {"zero", "cross"}
    assert picture.stat().st_size > 10_000
    with pytest.raises(SystemExit):  # checked while parsing, before the model loads
        main([*command, "--conditions", "zero,bogus"])
    assert "argument --conditions: unknown --conditions 'zero,bogus'" in capsys.readouterr().err


def test_models_without_full_attention_score_on_the_kv_cache_with_the_same_values(model, tokenizer, files, monkeypatch):
    """Sliding-window and recurrent models cannot take prefix trees: prompts are prefilled and options scored on
    the cache instead; both ways give the same log-probabilities."""
    from wit_plugin.evaluation.crosstask import runner as module

    pool, targets = (load_items(path) for path in files)
    settings = CrossTaskSettings.from_options({"wit_crosstask_conditions": "zero,mixed"})
    trees = evaluate_crosstask(model, tokenizer, pool, targets, settings)
    monkeypatch.setattr(module, "tree_attention", lambda model: False)
    cached = evaluate_crosstask(model, tokenizer, pool, targets, settings)
    assert "tree_tokens" in trees.work and "tree_tokens" not in cached.work
    for a, b in zip(trees.items, cached.items):
        assert (a.item.id, a.condition, a.prediction) == (b.item.id, b.condition, b.prediction)
        if a.option_logprobs is not None:
            assert a.option_logprobs == pytest.approx(b.option_logprobs, abs=1e-4)


def test_chat_prompts_are_one_user_turn_and_options_follow_the_assistant_header(model, tokenizer, files):
    pool, targets = (load_items(path) for path in files)
    settings = CrossTaskSettings.from_options({"wit_crosstask_conditions": "zero", "wit_crosstask_chat": True})
    result = evaluate_crosstask(model, tokenizer, pool, targets[:1], settings)
    (entry,) = result.items
    prompt = tokenizer.decode(entry.prompt_ids)
    assert prompt.endswith(
        f"<|im_start|>user\nDefinition: {CAPITALS}\nCountry: France\nCapital:<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [tokenizer.decode(ids) for ids in entry.option_ids] == ["Rome", "Paris", "Madrid"]  # no leading space


def test_ids_shared_by_pool_and_targets_do_not_confuse_items(model, tokenizer, tmp_path):
    """Ids are unique per file only: a pool row and a target may both be "1" and still be different items."""
    pool = load_items(
        write(
            tmp_path / "pool.jsonl",
            [row("letters", "apple banana cherry", "a", ["a", "b"], "Pick.", id="1"),
             row("letters", "zebra yak walrus", "b", ["a", "b"], id="2"),
             row("other", "one two", "a", ["a", "b"], "Pick.", id="3")],
        )
    )  # fmt: skip
    targets = load_items(
        write(tmp_path / "targets.jsonl", [row("letters", "zebra yak walrus here", "b", ["a", "b"], id="1")])
    )
    settings = CrossTaskSettings.from_options(
        {"wit_crosstask_conditions": "gold", "wit_crosstask_select": "lexical", "wit_crosstask_pseudo_rows": 2}
    )
    (entry,) = evaluate_crosstask(model, tokenizer, pool, targets, settings).items
    assert [demo.item.input for demo in entry.demos] == ["zebra yak walrus"]  # the most similar, not id "1"'s row


def test_gain_does_not_depend_on_the_order_of_conditions(model, tokenizer, files):
    pool, targets = (load_items(path) for path in files)
    gains = []
    for conditions in ("zero,random", "random,zero"):
        settings = CrossTaskSettings.from_options({"wit_crosstask_conditions": conditions})
        result = evaluate_crosstask(model, tokenizer, pool, targets[:2], settings)
        gains.append({r["task"]: r["gain"] for r in result.results if r["condition"] == "random"})
    assert gains[0] == gains[1] and all(value is not None for value in gains[0].values())


# --- nothing lost: results saved per condition, resumed by the same command ------------------------------------


def _without_run_details(trace: dict) -> dict:
    return {k: v for k, v in trace.items() if k not in ("work", "resume")}


def test_interrupted_crosstask_keeps_finished_conditions_and_resumes(model_path, files, tmp_path, monkeypatch, capsys):
    """The trace is written after each condition; Ctrl-C exits 130 with one line; the same command runs only the
    conditions left (pseudo-labelling included) and ends with the trace a fresh run writes."""
    from wit_plugin.cli import main
    from wit_plugin.evaluation.crosstask.runner import Runner

    real, ran = Runner.run, []

    def run(self, requests, advance):
        ran.append(requests[0].condition if requests else None)
        if stop_at in ran:
            raise KeyboardInterrupt
        return real(self, requests, advance)

    monkeypatch.setattr(Runner, "run", run)
    out = tmp_path / "trace.json"
    argv = ["crosstask", "--model", str(model_path), "--pool", str(files[0]), "--targets", str(files[1])]
    argv += ["--conditions", "zero,cross,gold,pseudo", "--limit", "1", "--shots", "1", "--select", "lexical"]
    stop_at = "label"  # interrupted while pseudo-labelling
    assert main([*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"wit crosstask: interrupted; what finished is saved in {out}: the same command resumes from it"
    partial = json.loads(out.read_text())
    assert partial["resume"]["done"] == ["zero", "cross", "gold"] and not partial["resume"]["complete"]
    assert {item["condition"] for item in partial["items"]} == {"zero", "cross", "gold"}
    assert {row["condition"] for row in partial["results"]} == {"zero", "cross", "gold"}
    stop_at, ran[:] = None, []
    assert main([*argv, "--out", str(out)]) == 0
    assert [condition for condition in ran if condition] == ["label", "pseudo"]  # only what was left
    resumed = json.loads(out.read_text())
    assert resumed["resume"]["complete"]
    ran.clear()
    assert main([*argv, "--out", str(tmp_path / "fresh.json"), "--force"]) == 0
    assert [condition for condition in ran if condition] == ["zero", "cross", "gold", "label", "pseudo"]
    assert _without_run_details(resumed) == _without_run_details(json.loads((tmp_path / "fresh.json").read_text()))
    ran.clear()
    assert main([*argv, "--out", str(out), "--shots", "2"]) == 0  # other flags: nothing reused
    assert [condition for condition in ran if condition] == ["zero", "cross", "gold", "label", "pseudo"]


def test_interrupted_posix_keeps_finished_exemplar_conditions(model_path, files, tmp_path, monkeypatch, capsys):
    from wit_plugin.cli import main
    from wit_plugin.evaluation.posix import exemplars

    real, calls = exemplars.evaluate_posix, []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(exemplars, "evaluate_posix", counting)
    prompts = write(
        tmp_path / "sets.jsonl",
        [{"prompts": ["Country: Norway\nCapital:", "Q: Country: Norway\nCapital:\nA:"], "task": "capitals"}],
    )
    out = tmp_path / "posix.json"
    argv = ["posix", "--model", str(model_path), "--prompts", str(prompts), "--pool", str(files[0])]
    argv += ["--exemplars", "none,cross,in-task", "--shots", "1", "--select", "lexical", "--max-new-tokens", "3"]
    stop_at = 2
    assert main([*argv, "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("wit posix: interrupted; what finished is")
    assert list(json.loads(out.read_text())["conditions"]) == ["none"]
    stop_at, calls[:] = None, []
    assert main([*argv, "--out", str(out)]) == 0 and len(calls) == 2  # cross and in-task only
    resumed = json.loads(out.read_text())
    assert main([*argv, "--out", str(tmp_path / "fresh.json"), "--force"]) == 0 and len(calls) == 5
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    for name in ("none", "cross", "in-task"):
        resumed["conditions"][name].pop("work"), fresh["conditions"][name].pop("work")
    assert _without_run_details(resumed) == _without_run_details(fresh)


def test_conditions_saved_one_by_one_give_the_one_pass_result(evaluated, model, tokenizer):
    """With a checkpoint, conditions run one after the other (each handed over as it completes); the items and
    accuracies are those of the one pass, which shares prompts across conditions."""
    pool, targets, settings, result = evaluated
    seen = []
    stepwise = evaluate_crosstask(
        model, tokenizer, pool, targets, settings, checkpoint=lambda partial, done: seen.append((partial, done))
    )
    assert [done for _, done in seen] == [list(settings.conditions[: k + 1]) for k in range(len(settings.conditions))]
    for partial, done in seen:
        assert {r["condition"] for r in partial.results} <= set(done)
        assert {item.condition for item in partial.items} == {
            c for c in done if any(r.condition == c for r in result.items)
        }

    def key(request):
        return request.item.where, request.condition, request.source, tuple(d.item.where for d in request.demos)

    one_pass = {key(r): r for r in result.items}
    assert len(one_pass) == len(result.items) == len(stepwise.items) and {key(r) for r in stepwise.items} == set(
        one_pass
    )
    for request in stepwise.items:
        other = one_pass[key(request)]
        assert request.prediction == other.prediction and request.prompt_ids == other.prompt_ids
        if request.option_logprobs is not None:
            assert request.option_logprobs == pytest.approx(other.option_logprobs, abs=1e-4)
    assert [(r["task"], r["condition"], r["accuracy"]) for r in stepwise.results] == [
        (r["task"], r["condition"], r["accuracy"]) for r in result.results
    ]
    assert stepwise.pseudo_labels == result.pseudo_labels
