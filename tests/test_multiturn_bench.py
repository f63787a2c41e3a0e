"""bench/multiturn.py's data: which conversations it takes, where the weights go, what stays unweighted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import multiturn  # bench scripts import each other by name, from the bench folder)


def chat(row: int, *roles: str) -> dict:
    return {"messages": [{"role": role, "content": f"row {row}, {role} {index}"} for index, role in enumerate(roles)]}


ROWS = [
    chat(1, "user", "assistant"),  # single turn: not taken
    chat(2, "user", "assistant", "user", "assistant"),
    chat(3, "system", "user", "assistant", "user", "assistant", "user", "assistant"),
    chat(4, "user", "assistant", "user", "assistant"),
    chat(5, "user", "assistant", "user", "assistant", "user", "assistant"),
]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_weights_every_assistant_message_but_the_last(tmp_path: Path) -> None:
    data = write(tmp_path / "data.jsonl", ROWS)
    paths = multiturn.split(data, tmp_path / "out", eval_rows=1, seed=0, weight=0.3)
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert sorted(split["eval"] + split["train"]) == [2, 3, 4, 5]  # line numbers of the multi-turn rows
    uniform, weighted, held_out = (read(paths[name]) for name in ("uniform", "weighted", "eval"))
    assert [ROWS.index(row) + 1 for row in uniform] == split["train"]
    assert [ROWS.index(row) + 1 for row in held_out] == split["eval"]  # held out as they are: no weights
    for plain, row in zip(uniform, weighted, strict=True):
        answers = [k for k, m in enumerate(plain["messages"]) if m["role"] == "assistant"]
        for index, (before, after) in enumerate(zip(plain["messages"], row["messages"], strict=True)):
            expected = {**before, "weight": 0.3} if index in answers[:-1] else before
            assert after == expected, (index, after)
    first_turns = read(paths["eval_first_turn"])
    for whole, first in zip(held_out, first_turns, strict=True):
        end = next(k for k, m in enumerate(whole["messages"]) if m["role"] == "assistant")
        assert first["messages"] == whole["messages"][: end + 1]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "no messages"}, r"data.jsonl:2: no 'messages' list \(keys: \['text'\]\)"),
        (
            {"messages": [*ROWS[1]["messages"][:3], {"role": "assistant", "content": "x", "weight": 1}]},
            r":2: messages\[3\]",
        ),
    ],
)
def test_rows_it_cannot_use_are_named_by_line(tmp_path: Path, row: dict, message: str) -> None:
    data = write(tmp_path / "data.jsonl", [ROWS[0], row])
    with pytest.raises(SystemExit, match=message):
        multiturn.split(data, tmp_path / "out", eval_rows=1, seed=0, weight=0.3)
