"""Per-message weights on real multi-turn data: the earlier assistant turns of each conversation down-weighted
(``"weight": 0.3`` on every assistant message but the last) against uniform weights, all under the ``it``
preset (only responses train), normalised by the weighted tokens (``weighted``) or by the sum of the weights
(``weighted_sum``), then compared by ``wit compare`` on held-out conversations.

    python bench/multiturn.py --data ../shared/data/lima_data.jsonl --out outputs/multiturn
    python bench/multiturn.py --data ... --runs uniform --seeds 1 --steps 2     # a quick check of the wiring

Takes the conversations of ``--data`` with at least two assistant messages (LIMA: 30 of 1030), splits them with a
seeded shuffle into training and held-out rows, and writes ``data/train_uniform.jsonl``,
``data/train_weighted.jsonl`` (the same rows, with the weights), ``data/eval.jsonl`` (held out, unweighted) and
``data/eval_first_turn.jsonl`` (each held-out conversation up to its first answer: the CE of an earlier turn, in
the context it has in the whole conversation; the whole conversations' response CE is mostly later turns).
Each run is ``axolotl train runs/<run>.yml`` (as bench/experiment.py: SmolLM2-135M-Instruct, LoRA on every linear
layer, sample packing, sdpa, CPU); rows are never cut (``--sequence-len`` must hold the longest). Then every
finished run and the base model go through ``wit compare`` on both held-out files; its tables are written to
``compare.txt`` and ``compare_first_turn.txt``, its numbers to ``compare*.json``, the wall time of each phase to
``timings.json``. One optimiser step is one packed row of ``--sequence-len`` tokens; on LIMA the 24 training
conversations make 9 such rows, so ``--steps 9`` is one epoch.

Resumable as bench/experiment.py: a finished run is not trained again, a compared row not evaluated again.
Wall time: ``--runs uniform --seeds 1`` (9 steps) trained in 11.8 min on 2 CPU cores shared with other work (load
average about 4), and its two ``wit compare`` passes (with the base model) took 2.9 and 1.8 min; the default, both
settings with seeds 1 and 2, is four such runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from experiment import Phase, base_config, finished, log, record_timings, timing_lines

REPO = Path(__file__).resolve().parents[1]
MESSAGE_WEIGHT_KEY = "weight"  # the default field per-message weights are read from
# setting -> (training file, extra keys). ``weighted`` keeps the WIT paper's N (weighted tokens), so its down-weighted
# turns also shrink the step; ``weighted_sum`` divides by Σ w instead (wit_normalize: weights), so only the
# relative emphasis of the turns changes.
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "uniform": ("uniform", {}),
    "weighted": ("weighted", {}),
    "weighted_sum": ("weighted", {"wit_normalize": "weights"}),
}


def assistant_indices(row: dict[str, Any]) -> list[int]:
    return [index for index, message in enumerate(row["messages"]) if message.get("role") == "assistant"]


def multi_turn(data: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of every conversation with at least two assistant messages; a row without a list of
    ``messages``, or one that already carries message weights, is an error naming its line."""
    selected = []
    for number, line in enumerate(data.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("messages"), list):
            raise SystemExit(f"{data}:{number}: no 'messages' list (keys: {sorted(row)})")
        weighted = [k for k, m in enumerate(row["messages"]) if MESSAGE_WEIGHT_KEY in m]
        if weighted:
            raise SystemExit(f"{data}:{number}: messages{weighted} already carry '{MESSAGE_WEIGHT_KEY}'")
        if len(assistant_indices(row)) >= 2:
            selected.append((number, {"messages": row["messages"]}))
    return selected


def down_weighted(row: dict[str, Any], weight: float) -> dict[str, Any]:
    """``row`` with ``weight`` on every assistant message but the last (the others keep the default, 1)."""
    row = copy.deepcopy(row)
    for index in assistant_indices(row)[:-1]:
        row["messages"][index][MESSAGE_WEIGHT_KEY] = weight
    return row


def first_turn(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` up to and including its first assistant message."""
    return {"messages": row["messages"][: assistant_indices(row)[0] + 1]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def split(data: Path, out: Path, eval_rows: int, seed: int, weight: float) -> dict[str, Path]:
    """Seeded split of the multi-turn rows into ``train_uniform``, ``train_weighted`` and ``eval`` files, and
    ``split.json`` naming the source lines of each part."""
    rows = multi_turn(data)
    if len(rows) <= eval_rows:
        raise SystemExit(f"{data} has {len(rows)} conversations with two or more assistant turns; need > {eval_rows}")
    random.Random(seed).shuffle(rows)
    held_out, train = rows[:eval_rows], rows[eval_rows:]
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "eval": write_jsonl(out / "eval.jsonl", [row for _, row in held_out]),
        "uniform": write_jsonl(out / "train_uniform.jsonl", [row for _, row in train]),
        "weighted": write_jsonl(out / "train_weighted.jsonl", [down_weighted(row, weight) for _, row in train]),
        "eval_first_turn": write_jsonl(out / "eval_first_turn.jsonl", [first_turn(row) for _, row in held_out]),
    }
    lines = {"source": str(data), "seed": seed, "eval": [n for n, _ in held_out], "train": [n for n, _ in train]}
    (out / "split.json").write_text(json.dumps(lines) + "\n")
    turns = sum(len(assistant_indices(row)) for _, row in train)
    log(f"{len(rows)} multi-turn conversations: {len(train)} train ({turns} assistant turns, "
        f"{turns - len(train)} weighted {weight:g}), {len(held_out)} held out")  # fmt: skip
    return paths


def longest_row(paths: list[Path], model: Path) -> int:
    """Tokens of the longest conversation rendered by the model's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines()]
    return max(len(tokenizer(tokenizer.apply_chat_template(row["messages"], tokenize=False)).input_ids) for row in rows)


def run_config(model: Path, train: Path, out: Path, name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """bench/experiment.py's configuration, with one packed row of ``--sequence-len`` per step and only the
    responses trained (``it``); the per-message weights come from the data."""
    config = base_config(model, train, out, args.steps, args.sequence_len)
    config.update(
        wit_preset="it",
        seed=seed,
        micro_batch_size=1,
        gradient_accumulation_steps=1,
        warmup_steps=1,
        logging_steps=1,
        excess_length_strategy="raise",  # never drop or cut a conversation (longest_row checks first)
        dataset_prepared_path=str(out / "prepared" / name),
        output_dir=str(out / "runs" / name),
    )
    return config


def train(name: str, config: dict[str, Any], out: Path, env: dict[str, str]) -> Phase:
    folder = out / "runs" / name
    if finished(folder):
        log(f"{name}: already finished")
        return Phase("train", 0.0, [])
    shutil.rmtree(folder, ignore_errors=True)  # a half-written run starts over
    path = out / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    command = [str(Path(sys.executable).parent / "axolotl"), "train", str(path)]
    log(" ".join(command))
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, cwd=out)
    seconds = time.perf_counter() - start
    log(f"{name}: trained in {seconds / 60:.1f} min")
    return Phase("train", seconds, [name])


def compare(
    folders: list[Path],
    out: Path,
    eval_data: Path,
    name: str,
    model: Path,
    args: argparse.Namespace,
    env: dict[str, str],
) -> Phase:
    """``wit compare`` of the runs and the base model on ``eval_data``; its table into ``<name>.txt``."""
    command = [
        str(Path(sys.executable).parent / "wit"), "compare", *map(str, folders), "--base", str(model),
        "--eval-data", str(eval_data), "--max-length", str(args.sequence_len), "--threads", str(args.threads),
        "--out", str(out / f"{name}.json"),
    ]  # fmt: skip
    log(" ".join(command))
    start = time.perf_counter()
    wide = {**env, "COLUMNS": "200"}  # the table's columns unsqueezed
    result = subprocess.run(command, check=False, env=wide, cwd=REPO, stdout=subprocess.PIPE, text=True)
    (out / f"{name}.txt").write_text(result.stdout)
    print(result.stdout, end="")
    if result.returncode:
        raise SystemExit(f"wit compare failed ({result.returncode}); its output is in {out / f'{name}.txt'}")
    return Phase(name, time.perf_counter() - start, [folder.name for folder in folders])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="JSONL of {'messages': [...]} rows (e.g. LIMA)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "multiturn")
    parser.add_argument("--weight", type=float, default=0.3, help="weight of every assistant message but the last")
    parser.add_argument("--eval-rows", type=int, default=6, help="held-out conversations")
    parser.add_argument("--runs", default=",".join(SETTINGS), help=f"settings to train ({', '.join(SETTINGS)})")
    parser.add_argument("--seeds", default="1,2", help="training seeds (one run per setting each: two show the noise)")
    parser.add_argument("--steps", type=int, default=9, help="optimiser steps of one packed row each (9: one epoch)")
    parser.add_argument("--sequence-len", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for wit compare")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    args = parser.parse_args()
    settings = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; known: {list(SETTINGS)}")
    from wit_plugin.demo.model import prepare_default_model

    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    out = args.out.resolve()
    model = prepare_default_model()
    paths = split(args.data.resolve(), out / "data", args.eval_rows, args.seed, args.weight)
    longest = longest_row(list(paths.values()), model)
    if longest > args.sequence_len:
        raise SystemExit(f"the longest conversation has {longest} tokens; raise --sequence-len to at least that")
    phases, names = [], []
    for setting in settings:
        for seed in dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()):
            name = f"{setting}_s{seed}"
            names.append(name)
            data, keys = SETTINGS[setting]
            config = {**run_config(model, paths[data], out, name, seed, args), **keys}
            phases.append(train(name, config, out, env))
    folders = [
        next(iter(sorted((out / "runs" / name).rglob("wit_run.json")))).parent
        for name in names
        if finished(out / "runs" / name)
    ]
    phases.append(compare(folders, out, paths["eval"], "compare", model, args, env))
    phases.append(compare(folders, out, paths["eval_first_turn"], "compare_first_turn", model, args, env))
    history = record_timings(out, phases)
    for line in timing_lines(history, names):
        log(line)
    log(f"wrote {out / 'compare.txt'} and {out / 'compare_first_turn.txt'} (numbers: compare*.json)")


if __name__ == "__main__":
    main()
