"""The `wit` command line: help, prepare, inspect (terminal and HTML)."""

from __future__ import annotations

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
    assert result.returncode == 0
    for command in ("prepare", "inspect"):
        assert command in result.stdout


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


def test_inspect_reads_an_axolotl_config(rows, model_path, tmp_path, capsys):
    config = tmp_path / "cfg.yml"
    config.write_text(
        f"base_model: {model_path}\nwit_preset: im\ndatasets:\n  - path: {rows}\n    type: chat_template\n"
    )
    assert main(["inspect", "--config", str(config)]) == 0
    legend = capsys.readouterr().out
    assert re.search(r"instruction\s+│ 1 ", legend) and re.search(r"template\s+│ 0 ", legend)  # im preset


def test_inspect_tags_a_config_row_as_training_does(model_path, tmp_path, capsys):
    data = tmp_path / "sharegpt.jsonl"
    data.write_text(
        json.dumps({"chats": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}) + "\n"
    )
    config = tmp_path / "cfg.yml"
    config.write_text(
        f"base_model: {model_path}\nwit_prompt_weight: 0.3\ndatasets:\n  - path: {data}\n    type: chat_template\n"
        "    field_messages: chats\n    message_property_mappings: {role: from, content: value}\n"
    )
    assert main(["inspect", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>user⏎" in out and "<|im_start|>assistant⏎" in out  # human/gpt mapped as in training
    assert re.search(r"instruction\s+│ 0.3 ", out)
    assert main(["inspect", "--config", str(config), "--preset", "it"]) == 0  # replaces the config's weights
    assert re.search(r"instruction\s+│ 0 ", capsys.readouterr().out)
    config.write_text(config.read_text() + "wit_prompt_wieght: 1\n")
    assert main(["inspect", "--config", str(config)]) == 2
    assert "unknown wit_plugin option(s) ['wit_prompt_wieght']" in capsys.readouterr().err


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
    assert "must be at least 1, got 0" in capsys.readouterr().err
