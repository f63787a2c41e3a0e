"""The `wit` command line: help, prepare, inspect (terminal and HTML)."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import subprocess
import sys

import pytest

from wit_plugin.cli import main


def test_help_lists_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "wit_plugin.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stderr
    for command in ("prepare", "inspect", "posix"):
        assert command in result.stdout


def test_help_imports_no_framework():
    """``wit --help`` and each subcommand's help answer at once: no torch, transformers or Axolotl import
    (timed in ``bench/cli.py``)."""
    probe = (
        "import sys\n"
        "from wit_plugin.cli import build_parser\n"
        "parser = build_parser()\n"
        "for command in [[]] + [[name] for name in parser._subparsers._group_actions[0].choices]:\n"
        "    try:\n"
        "        parser.parse_args([*command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'axolotl', 'trl', 'datasets', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"}]},
                {
                    "messages": [
                        {"role": "user", "content": "Name a <b>tag</b>."},
                        {"role": "assistant", "content": "Paris"},
                    ]
                },
            ]
        )
    )
    return path


def test_inspect_colours_tokens_by_role_and_writes_html(rows, model_path, tmp_path, capsys):
    page = tmp_path / "row.html"
    code = main(
        [
            "inspect",
            str(rows),
            "--tokenizer",
            str(model_path),
            "--row",
            "1",
            "--preset",
            "it",
            "--tokens",
            "--html",
            str(page),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "response" in out and "instruction" in out
    html = page.read_text()
    assert "<b>" not in html and "&lt;" in html  # content is escaped, not interpreted
    trained = re.findall(r'title="[^"]*role=(\w+) weight=([\d.]+)"', html)
    assert ("response", "1") in trained and ("instruction", "0") in trained
    assert all(weight == "0" for role, weight in trained if role in ("template", "instruction", "system"))


def test_inspect_counts_only_tokens_with_a_weight_as_trained_and_names_unread_keys(rows, model_path, tmp_path, capsys):
    data = tmp_path / "weighted.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "first question", "score": 3, "loss_weight": 0},
            {"role": "assistant", "content": "one", "weight": 0.5},
        ]
    }
    data.write_text(json.dumps(row) + "\n")
    assert (
        main(
            ["inspect", str(data), "--tokenizer", str(model_path), "--preset", "it", "--html", str(tmp_path / "p.html")]
        )
        == 0
    )
    out = capsys.readouterr().out
    legend = {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if len(cells := [c.strip() for c in re.split("[│┃]", line)]) == 4
    }
    assert legend["role"] == ["weight", "tokens", "trained (weight > 0)"]
    assert legend["template"][0] == "0" and int(legend["template"][1]) > 0 and legend["template"][2] == "0"
    assert legend["instruction"] == ["0", "2", "0"] and legend["response"] == ["1 × message 0.5", "1", "1"]
    assert "message key messages[0].score: read by no row format" in out
    flat = " ".join(out.split())  # the console wraps long lines
    assert "messages[0].loss_weight: read by no row format nor the chat template (no effect); to weight messages by " \
        "it, set `wit_message_weight_field: loss_weight`" in flat and "wit_message_weight_field: score" not in flat  # fmt: skip
    page = (tmp_path / "p.html").read_text()
    assert 'role=response weight=0.5"' in page  # the final weight: role weight 1 × the message's weight 0.5
    assert "<th>trained (weight &gt; 0)</th>" in page or "<th>trained (weight > 0)</th>" in page


PLUGIN = "plugins: [wit_plugin.WITPlugin]\n"
needs_axolotl = pytest.mark.skipif(importlib.util.find_spec("axolotl") is None, reason="--config reads Axolotl configs")


@needs_axolotl
def test_inspect_reads_an_axolotl_config(rows, model_path, tmp_path, capsys):
    config = tmp_path / "cfg.yml"
    config.write_text(
        f"base_model: {model_path}\n{PLUGIN}wit_preset: im\ndatasets:\n  - path: {rows}\n    type: chat_template\n"
    )
    assert main(["inspect", "--config", str(config)]) == 0
    legend = capsys.readouterr().out
    assert re.search(r"instruction\s+│ 1 ", legend) and re.search(r"template\s+│ 0 ", legend)  # im preset
    assert "never a target" in legend


@needs_axolotl
def test_inspect_tags_a_config_row_as_training_does(model_path, tmp_path, capsys):
    data = tmp_path / "sharegpt.jsonl"
    data.write_text(
        json.dumps({"chats": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}) + "\n"
    )
    config = tmp_path / "cfg.yml"
    config.write_text(
        f"base_model: {model_path}\n{PLUGIN}wit_prompt_weight: 0.3\ndatasets:\n  - path: {data}\n"
        "    type: chat_template\n    field_messages: chats\n    message_property_mappings: {role: from, content: value}\n"
    )
    assert main(["inspect", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>user⏎" in out and "<|im_start|>assistant⏎" in out  # human/gpt mapped as in training
    assert re.search(r"instruction\s+│ 0.3 ", out)
    assert main(["inspect", "--config", str(config), "--preset", "it"]) == 0  # replaces the config's weights
    assert re.search(r"instruction\s+│ 0 ", capsys.readouterr().out)
    config.write_text(config.read_text() + "wit_prompt_wieght: 1\n")
    assert main(["inspect", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"{config}: unknown wit_plugin option(s) ['wit_prompt_wieght']" in error
    assert "wit_prompt_wieght: did you mean wit_prompt_weight?" in error
    config.write_text(config.read_text().replace("wit_prompt_wieght: 1\n", "").replace(str(data), "missing.jsonl"))
    assert main(["inspect", "--config", str(config)]) == 2
    assert f"{config}: datasets[0].path missing.jsonl is not a file" in capsys.readouterr().err
    assert main(["inspect", str(data), "--config", str(config)]) == 0  # the file named on the command line


@needs_axolotl
def test_inspect_catches_wit_keys_without_the_plugin(rows, model_path, tmp_path, capsys):
    """Axolotl drops unknown keys silently: such a config would train unweighted."""
    config = tmp_path / "cfg.yml"
    config.write_text(f"base_model: {model_path}\nwit_preset: im\ndatasets:\n  - path: {rows}\n")
    assert main(["inspect", "--config", str(config)]) == 2
    assert "has no `plugins: [wit_plugin.WITPlugin]`" in capsys.readouterr().err


def test_inspect_json_text_is_exactly_the_rendered_row(model_path, tmp_path, capsys):
    from transformers import AutoTokenizer

    data = tmp_path / "rows.jsonl"
    messages = [{"role": "user", "content": "日本語で答えて"}, {"role": "assistant", "content": "東京です。🙂"}]
    data.write_text(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    out = tmp_path / "rows.json"
    page = tmp_path / "rows.html"
    assert main(["inspect", str(data), "--tokenizer", str(model_path), "--json", str(out), "--html", str(page)]) == 0
    assert "東京です。🙂" in capsys.readouterr().out  # multi-byte characters intact in the terminal
    (row,) = json.loads(out.read_text())["rows"]
    rendered = AutoTokenizer.from_pretrained(model_path).apply_chat_template(messages, tokenize=False)
    assert "".join(token["text"] for token in row["tokens"]) == rendered
    assert {tuple(token) for token in row["tokens"]} == {("id", "text", "role", "weight")}
    assert row["tokens"][0]["weight"] == 0  # never a target
    response = "".join(t["text"] for t in row["tokens"] if t["role"] == "response")
    assert response == "東京です。🙂"
    shown = html.unescape(re.sub("<[^>]+>", "", page.read_text(encoding="utf-8")))
    assert "日本語で答えて" in shown and "東京です。🙂" in shown


@needs_axolotl
def test_inspect_config_applies_added_tokens_picks_a_dataset_and_shows_long_rows(model_path, tmp_path, capsys):
    short, long_rows = tmp_path / "short.jsonl", tmp_path / "long.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    short.write_text(json.dumps(row) + "\n")
    long_row = {"messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]}
    long_rows.write_text(json.dumps(long_row) + "\n")
    config = tmp_path / "cfg.yml"
    body = (
        f"base_model: {model_path}\n{PLUGIN}chat_template: llama3\ntokens: ['<|eot_id|>']\nsequence_len: 64\n"
        f"datasets:\n  - path: {short}\n    type: chat_template\n  - path: {long_rows}\n    type: chat_template\n"
    )
    config.write_text(body)
    out = tmp_path / "rows.json"
    assert main(["inspect", "--config", str(config), "--json", str(out)]) == 0
    tokens = json.loads(out.read_text())["rows"][0]["tokens"]
    assert [t["text"] for t in tokens if t["role"] == "eot"] == ["<|eot_id|>"]  # one added token, as in training
    assert main(["inspect", "--config", str(config), "--dataset", "1"]) == 0
    assert "DROPPED by training: " in capsys.readouterr().out
    config.write_text(body + "excess_length_strategy: truncate\n")
    assert main(["inspect", "--config", str(config), "--dataset", "1", "--json", str(out)]) == 0
    assert "truncated at 64 of " in capsys.readouterr().out
    assert len(json.loads(out.read_text())["rows"][0]["tokens"]) == 64
    assert main(["inspect", "--config", str(config), "--dataset", "2"]) == 2
    assert "has 2 dataset(s); --dataset 2 does not exist" in capsys.readouterr().err


@needs_axolotl
def test_inspect_reports_a_template_error_as_one_line(model_path, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    data.write_text(json.dumps(row) + "\n")
    config = tmp_path / "cfg.yml"
    config.write_text(f"base_model: {model_path}\n{PLUGIN}chat_template: gemma\ndatasets:\n  - path: {data}\n")
    assert main(["inspect", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wit inspect: error: {data}:1: ")
    assert "System role not supported" in err[0]


def test_inspect_errors_are_clear(rows, model_path, tmp_path, capsys):
    assert main(["inspect", str(rows)]) == 2
    assert "give a JSONL file and --tokenizer, or --config" in capsys.readouterr().err
    assert main(["inspect", str(rows), "--tokenizer", str(model_path), "--row", "7"]) == 2
    assert "has no row 7" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\nnot json\n")
    assert main(["inspect", str(bad), "--tokenizer", str(model_path)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["inspect", str(rows), "--tokenizer", str(tmp_path / "missing")]) == 2
    assert "cannot load a tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["posix", "--model", "m", "--prompts", "p.jsonl", "--max-new-tokens", "0"])
    assert "--max-new-tokens must be >= 1, got 0" in capsys.readouterr().err


def _evaluating_commands(tmp_path):
    """Each evaluating command with valid small inputs (what is read before a model loads)."""
    from tests.test_crosstask import POOL, TARGETS, write

    data = write(tmp_path / "eval.jsonl", [{"prompt": "Say hi:", "completion": " hi"}])
    pool, targets = write(tmp_path / "pool.jsonl", POOL), write(tmp_path / "targets.jsonl", TARGETS)
    prompts = write(tmp_path / "sets.jsonl", [{"prompts": ["Say hi.", "Say hello."]}])
    model = tmp_path / "some-model"  # passes the model-folder check; loading it is what the tests intercept
    model.mkdir()
    (model / "config.json").write_text("{}")
    return {
        "compare": ["compare", "--base", str(model), "--eval-data", str(data)],
        "crosstask": ["crosstask", "--model", str(model), "--pool", str(pool), "--targets", str(targets)],
        "posix": ["posix", "--model", str(model), "--prompts", str(prompts)],
    }


@pytest.mark.parametrize("command", ["compare", "crosstask", "posix"])
def test_output_folders_are_made_or_refused_before_a_model_loads(command, tmp_path, monkeypatch, capsys):
    from wit_plugin.cli import main
    from wit_plugin.evaluation import models

    argv = _evaluating_commands(tmp_path)[command]
    out, picture = tmp_path / "new" / "out.json", tmp_path / "other" / "deeper" / "plot.png"
    seen = []

    def load_model(*args, **kwargs):
        seen.append((out.parent.is_dir(), picture.parent.is_dir()))
        raise RuntimeError("stop here")

    monkeypatch.setattr(models, "load_model", load_model)
    try:
        main([*argv, "--out", str(out), "--plot", str(picture)])
    except RuntimeError:
        pass
    assert seen == [(True, True)]  # both folders existed when the model was about to load
    seen.clear()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main([*argv, "--out", str(blocker / "out.json")]) == 2
    assert f"cannot write {blocker / 'out.json'}: {blocker} is a file, not a folder" in capsys.readouterr().err
    assert main([*argv, "--plot", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder: give the name of the file to write" in capsys.readouterr().err
    assert not seen  # refused before any model loads


def test_log_lines_go_to_stderr_as_it_is_when_they_are_written():
    """`wit`'s log handler follows sys.stderr: a stderr redirected after start-up gets the lines, and one closed
    since (a finished test's capture) is not written to ("--- Logging error ---")."""
    import contextlib
    import io
    import logging

    from wit_plugin.cli import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging()
        log = logging.getLogger("wit_plugin.test")
        first = io.StringIO()
        with contextlib.redirect_stderr(first):
            log.info("one")
        first.close()
        second = io.StringIO()
        with contextlib.redirect_stderr(second):
            log.info("two")
        assert second.getvalue() == "INFO wit_plugin.test: two\n"
    finally:
        root.handlers, root.level = saved
