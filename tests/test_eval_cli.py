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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_log_lines_say_elapsed_and_time_left():
    from wit_plugin.cli.progress import ProgressLog

    clock, lines = Clock(), []
    log = ProgressLog("POSIX", lines.append, clock=clock, interval_s=30, fraction=0.25)
    log.update(0, 100)  # the first update says the work started
    clock.now += 10
    log.update(10, 100)  # neither 30 s nor 25% since the last line: quiet
    clock.now += 10
    log.update(25, 100)  # 25% more
    clock.now += 31
    log.update(30, 100)  # 30 s more
    clock.now += 1
    log.update(31, 100)  # quiet again
    clock.now += 9
    log.update(100, 100)  # done: always said, once
    log.update(100, 100)
    assert lines == [
        "POSIX: 0/100 (0%), 0s elapsed",
        "POSIX: 25/100 (25%), 20s elapsed, about 1m00s left",
        "POSIX: 30/100 (30%), 51s elapsed, about 1m59s left",
        "POSIX: 100/100 (100%), 1m01s elapsed, done",
    ]


def test_progress_log_without_a_total_and_stages():
    from wit_plugin.cli.progress import ProgressLog, duration

    clock, lines = Clock(), []
    log = ProgressLog("compare", lines.append, clock=clock, interval_s=30)
    log.update(1, None)
    clock.now += 5
    log.update(2, None)
    log.stage("run-a: POSIX")
    clock.now += 3700
    log.update(3, None)
    assert lines == [
        "compare: 1 done, 0s elapsed",
        "compare: run-a: POSIX (5s elapsed)",
        "compare: 3 done, 1h01m elapsed",
    ]
    assert [duration(s) for s in (0, 59.6, 61, 3599, 7322)] == ["0s", "1m00s", "1m01s", "59m59s", "2h02m"]


def test_cli_progress_is_logged_when_output_is_not_a_terminal(model_path, tmp_path, capsys):
    prompts = tmp_path / "sets.jsonl"
    prompts.write_text("".join(json.dumps({"prompts": [f"Say {w}.", f"Please say {w}."]}) + "\n" for w in "ab"))
    argv = ["posix", "--model", str(model_path), "--prompts", str(prompts), "--max-new-tokens", "2", "--threads", "1"]
    assert main([*argv, "--device", "cpu"]) == 0  # under pytest, stdout is no terminal
    prefix = "INFO wit_plugin.cli.progress: "
    lines = [line.removeprefix(prefix) for line in capsys.readouterr().err.splitlines() if line.startswith(prefix)]
    assert lines and lines[-1].startswith("POSIX: 2/2 (100%), ") and lines[-1].endswith("elapsed, done")


def test_compare_progress_counts_items_over_every_model_with_time_left(
    inputs, model_path, tmp_path, monkeypatch, capsys
):
    """`wit compare` logs done/total in evaluated items (held-out rows, POSIX sets, cross-task requests) over all
    its models, with the time left, and still names each stage (it used to log only the stages)."""
    from functools import partial

    from wit_plugin.cli import progress

    clock = Clock()

    def ticking() -> float:  # one second per look at the clock
        clock.now += 1
        return clock.now

    monkeypatch.setattr(progress, "ProgressLog", partial(progress.ProgressLog, clock=ticking, interval_s=0))
    other = tmp_path / "same-model-again"
    other.symlink_to(model_path, target_is_directory=True)  # a second plain model folder: a second row
    tasks = inputs["crosstask"][-1]
    argv = [*inputs["compare"], str(other), "--posix", str(tmp_path / "sets.jsonl"), "--pool", tasks]
    argv += ["--targets", tasks, "--conditions", "zero,cross", "--select", "lexical", "--device", "cpu"]
    assert main([*argv, "--threads", "1"]) == 0
    prefix = "INFO wit_plugin.cli.progress: compare: "
    logged = [line.removeprefix(prefix) for line in capsys.readouterr().err.splitlines() if line.startswith(prefix)]
    counts = [line for line in logged if line.split(" ")[0].count("/") == 1 and line.split(" ")[1].startswith("(")]
    # per model: 1 held-out row, 1 POSIX set, 4 targets x (zero + cross from the one other task) = 10 items
    pairs = [tuple(map(int, line.split(" ")[0].split("/"))) for line in counts]
    assert {total for _, total in pairs} == {20}
    done = [d for d, _ in pairs]
    assert done == sorted(set(done)) and done[-1] == 20 and 10 in done  # the first model's end is half way
    assert counts[-1].startswith("20/20 (100%), ") and counts[-1].endswith("elapsed, done")
    assert all(", about " in line and line.endswith(" left") for line in counts[:-1] if not line.startswith("0/"))
    assert len(counts) >= 4
    assert any(line.startswith(f"{other}: POSIX (") for line in logged)  # the stage text is kept


def test_compare_counts_a_failed_row_as_done(model_path, tmp_path):
    from wit_plugin.evaluation.compare import CompareSettings, compare_runs

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Hi {k}", "completion": " there"}) + "\n" for k in range(3)))
    empty = tmp_path / "empty"
    empty.mkdir()
    counted = []
    runs = compare_runs(
        [empty, model_path], CompareSettings(eval_data=held, device="cpu"), count=lambda *c: counted.append(c)
    )
    assert "error" in runs["runs"][0] and "eval" in runs["runs"][1]
    assert counted == [(3, 6), (6, 6)]  # 3 held-out rows per model; the failed one's are not left to do
