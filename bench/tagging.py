"""Tagging speed: wit_plugin's role tagger vs Axolotl's own chat_template tokenisation, same rows, one run.

    python bench/tagging.py [--data rows.jsonl] [--rows 1000]

Without --data it uses the generated demo rows; e.g. ../shared/data/lima_data.jsonl for long multi-turn
rows. Prints rows/s of each and the ratio (ours / Axolotl's; > 1 means faster).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from axolotl.prompt_strategies.chat_template import load
from axolotl.utils.dict import DictDefault
from transformers import AutoTokenizer

from wit_plugin.demo.data import generate_rows
from wit_plugin.demo.model import prepare_default_model
from wit_plugin.tagging import RoleTagger


def read_rows(path: Path | None, count: int) -> list[dict]:
    if path is None:
        return list(generate_rows(count, seed=0))
    with path.open() as handle:
        return [json.loads(line) for _, line in zip(range(count), handle)]


def rows_per_second(tokenize, rows: list[dict], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for row in rows:
            tokenize(row)
        best = min(best, time.perf_counter() - start)
    return len(rows) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model())
    rows = read_rows(args.data, args.rows)
    cfg = DictDefault({"sequence_len": 1 << 20, "train_on_inputs": False, "chat_template": "tokenizer_default"})
    stock = load(tokenizer, cfg, {"type": "chat_template", "roles_to_train": ["assistant"], "train_on_eos": "turn"})
    ours = RoleTagger(tokenizer, "chat")
    stock_speed = rows_per_second(stock.tokenize_prompt, rows)
    our_speed = rows_per_second(ours.tag, rows)
    turns = sum(len(row["messages"]) for row in rows) / len(rows)
    print(f"{len(rows)} rows, {turns:.1f} messages/row, {args.data or 'generated demo rows'}")
    print(f"axolotl chat_template : {stock_speed:8.1f} rows/s")
    print(f"wit_plugin RoleTagger : {our_speed:8.1f} rows/s")
    print(f"ratio (ours / axolotl): {our_speed / stock_speed:8.2f}x")


if __name__ == "__main__":
    main()
