"""What every evaluating command (``wit posix``, ``wit crosstask``, ``wit compare``) shares: ``--threads`` and
``--dtype`` applied before the model loads, progress with time left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wit_plugin.cli import build_parser, main
from wit_plugin.evaluation import models

EVALUATING = ("posix", "crosstask", "compare")


class Loaded(Exception):
    """Stops a command at its model load: the test has seen what it needs."""


@pytest.fixture
def inputs(tmp_path, model_path) -> dict[str, list[str]]:
    """Minimal valid inputs of each evaluating command (a real model folder, which the tests stop before
    loading)."""
    prompts = tmp_path / "sets.jsonl"
    prompts.write_text(json.dumps({"prompts": ["Say hi.", "Say hello."]}) + "\n")
    rows = [{"task": t, "input": f"{t} {i}?", "options": ["yes", "no"], "label": "yes"} for t in "ab" for i in (1, 2)]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "Hi", "completion": " there"}) + "\n")
    model = str(model_path)
    return {
        "posix": ["posix", "--model", model, "--prompts", str(prompts)],
        "crosstask": ["crosstask", "--model", model, "--pool", str(tasks), "--targets", str(tasks)],
        "compare": ["compare", "--eval-data", str(held), "--base", model],
    }


@pytest.mark.parametrize("command", EVALUATING)
def test_threads_and_dtype_parse_on_every_evaluating_command(command, inputs):
    parser = build_parser()
    args = parser.parse_args(inputs[command])
    assert (args.threads, args.dtype) == (None, "float32")
    args = parser.parse_args([*inputs[command], "--threads", "2", "--dtype", "bfloat16"])
    assert (args.threads, args.dtype) == (2, "bfloat16")
    for bad in (["--dtype", "int8"], ["--threads", "0"], ["--threads", "two"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*inputs[command], *bad])


@pytest.mark.parametrize("command", EVALUATING)
def test_threads_are_set_and_dtype_reaches_the_loader_before_loading(command, inputs, monkeypatch, capsys):
    seen = {}

    def spy(path, device=None, base=None, dtype="float32"):
        seen.update(threads=torch.get_num_threads(), dtype=dtype)
        raise Loaded

    monkeypatch.setattr(models, "load_model", spy)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        try:
            main([*inputs[command], "--threads", str(wanted), "--dtype", "bfloat16"])
        except Loaded:
            pass
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": wanted, "dtype": "bfloat16"}


def test_loader_loads_in_the_dtype_asked_for(model_path: Path):
    model, _ = models.load_model(model_path, "cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = models.load_model(model_path, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        models.load_model(model_path, "cpu", dtype="int8")
