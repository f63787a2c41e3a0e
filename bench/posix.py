"""POSIX speed: ``evaluate_posix`` against the one-pair-at-a-time way (one generate per prompt, one forward per
(prompt, response) pair, the way the reference package runs), on the same model and generated prompt sets.
Both compute this project's ψ (the paper's Eq. 1), not the package's: ``bench/posix_package.py`` compares with
the package's own numbers.

    python bench/posix.py [--sets 4] [--size 5] [--max-new-tokens 24] [--threads 1]

On a shared machine use --threads 1: a second OpenMP thread waiting on a busy core distorts small forwards.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from typing import Any

import torch
from harness import best_seconds

from wit_plugin.compat import cache_kwargs, output_cache
from wit_plugin.demo.model import prepare_default_model
from wit_plugin.evaluation.engine import SpecialIds, cut_at_eos, render_prompt
from wit_plugin.evaluation.models import load_model
from wit_plugin.evaluation.posix import evaluate_posix, psi
from wit_plugin.evaluation.posix.prompts import PromptSet
from wit_plugin.evaluation.posix.variants import CHAT, make_prompt_set

INSTRUCTIONS = (
    "Name the capital city of France and give one fact about it.",
    "Explain in one sentence why the sky looks blue during the day.",
    "Give three tips for getting a good night of sleep.",
    "Translate the sentence 'The cat is sleeping' into Spanish.",
    "What is the sum of twelve and thirty, written as a number?",
    "Suggest a short, friendly name for a pet goldfish.",
)


def one_pair_at_a_time(
    model: Any, tokenizer: Any, sets: list[PromptSet], max_new_tokens: int
) -> tuple[list[float], list[list[list[int]]], dict[str, float]]:
    """The formula computed plainly: a generate call per prompt, a full forward per pair."""
    special = SpecialIds.of(model, tokenizer)
    psis, responses, seconds = [], [], {"generate_s": 0.0, "pairs_s": 0.0}
    for prompts in sets:
        inputs = [render_prompt(tokenizer, prompt) for prompt in prompts]
        outputs = []
        clock = time.perf_counter()
        for ids in inputs:
            generated = model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(special.eos),
                pad_token_id=special.pad,
            )
            outputs.append(list(cut_at_eos(generated[0, len(ids) :].tolist(), special.eos)))
        seconds["generate_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        matrix = [[0.0] * len(inputs) for _ in inputs]
        for i, x in enumerate(inputs):
            for j, y in enumerate(outputs):
                logits = model(torch.tensor([x + y])).logits[0, len(x) - 1 : len(x) + len(y) - 1]
                matrix[i][j] = logits.log_softmax(-1).gather(-1, torch.tensor(y)[:, None]).sum().item()
        seconds["pairs_s"] += time.perf_counter() - clock
        psis.append(psi(matrix, [len(y) for y in outputs]))
        responses.append(outputs)
    return psis, responses, seconds


def lower_bound(model: Any, work: dict[str, float], generated_tokens: int) -> tuple[float, float, dict[str, float]]:
    """Seconds an exact evaluator of this kind needs for this workload on this machine, at its best rates.

    The kind: it runs every prompt token once (a shared prefix once), every generated token fed back
    (``generated_tokens``) and every response token scored under another prompt (with the LM head and a
    logsumexp), and decodes in ``decode_steps`` sequential steps that each
    stream the whole model's weights. Rates: tokens in one large batch (the cheapest way to run them), and
    a one-row decode step for a pass over the weights. Also returns the bound without the passes: what is
    left even if decoding cost nothing beyond its tokens (ideal speculative decoding).
    """
    ids = torch.randint(0, model.config.vocab_size, (16, 64))
    per_token = best_seconds(lambda: model(ids, logits_to_keep=1)) / ids.numel()
    per_scored = best_seconds(lambda: model(ids).logits.logsumexp(-1)) / ids.numel()
    cache = output_cache(model(ids[:1], use_cache=True))
    step = ids[:1, :1]
    per_pass = best_seconds(lambda: model(step, use_cache=True, **cache_kwargs(model, copy.deepcopy(cache))))
    rates = {"ms/token": 1e3 * per_token, "ms/scored token": 1e3 * per_scored, "ms/weight pass": 1e3 * per_pass}
    tokens = (work["prompt_tokens"] + generated_tokens - work["decode_steps"]) * per_token
    tokens += work["scored_tokens"] * per_scored
    return tokens + work["decode_steps"] * per_pass, tokens, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--size", type=int, default=5, help="prompts per set (N)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(prepare_default_model(), "cpu")
    model.eval()
    rng = random.Random(args.seed)
    sets = [
        make_prompt_set(text, rng, args.size, ("spelling", "template"), base_format=CHAT)
        for text in INSTRUCTIONS[: args.sets]
    ]
    print(
        f"{len(sets)} sets x {args.size} prompts, max_new_tokens={args.max_new_tokens}, {torch.get_num_threads()} threads"
    )

    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # first-call set-up kept out of both timings
        start, cpu = time.perf_counter(), time.process_time()
        fast = evaluate_posix(model, sets, tokenizer, max_new_tokens=args.max_new_tokens)
        fast_s, fast_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        slow_psis, slow_responses, slow_phases = one_pair_at_a_time(model, tokenizer, sets, args.max_new_tokens)
        slow_s, slow_cpu = time.perf_counter() - start, time.process_time() - cpu

    same = sum(
        list(r.token_ids) == y for result, ys in zip(fast.sets, slow_responses) for r, y in zip(result.responses, ys)
    )
    difference = max(abs(a - b) for a, b in zip(fast.psis, slow_psis))
    print(f"one pair at a time: {slow_s:7.2f} s wall {slow_cpu:7.2f} s CPU")
    print("  phases: " + ", ".join(f"{key} {value:.2f}" for key, value in slow_phases.items()))
    print(f"evaluate_posix:     {fast_s:7.2f} s wall {fast_cpu:7.2f} s CPU")
    print(
        "  phases: "
        + ", ".join(
            f"{key} {value:.2f}" if key.endswith("_s") else f"{key} {value:.0f}" for key, value in fast.work.items()
        )
    )
    print(f"speed-up: {slow_s / fast_s:.1f}x wall, {slow_cpu / fast_cpu:.1f}x CPU time")
    print(f"identical greedy responses: {same}/{sum(len(s) for s in sets)}; max |psi difference|: {difference:.2e}")
    print(f"POSIX: {fast.posix:.4f} (batched) vs {sum(slow_psis) / len(slow_psis):.4f} (one pair at a time)")
    with torch.no_grad():
        generated = sum(len(response.token_ids) - 1 for result in fast.sets for response in result.responses)
        floor, without_passes, rates = lower_bound(model, fast.work, generated)
    print("rates: " + ", ".join(f"{value:.2f} {key}" for key, value in rates.items()))
    print(f"lower bound for an exact token-by-token evaluator here: {floor:.2f} s, i.e. at most {slow_s / floor:.1f}x")
    print(f"  even with free decoding passes: {without_passes:.2f} s, i.e. at most {slow_s / without_passes:.1f}x")


if __name__ == "__main__":
    main()
