"""Search against grid: does ``wit tune`` (Optuna TPE with median pruning) find weights as good as a grid search
for a fraction of its training steps? SmolLM2-135M-Instruct (``$WIT_CACHE``), LoRA, trained through the TRL
entry point (:func:`wit_plugin.tuning.tune.tune_trl`, in this process: no subprocess start-up per trial) on a
seeded split of a real chat dataset, side by side in one run, for each seed:

* grid: every λp × λr of ``--grid-prompt`` × ``--grid-response``, each trained ``--steps`` steps and scored by
  held-out response CE (``wit compare``'s number, :func:`wit_plugin.tuning.objective.score_run`);
* search: ``wit tune`` (median pruning from its second trial) over the grid's box, resumed one trial at a time while one more full trial fits in a
  third of the grid's total training steps (pruned trials use fewer).

The seed sets the training (LoRA init, data order) and the sampler; the seed-to-seed spread is the grid points'
mean range of held-out response CE across seeds. Resumable: finished grid points and the search studies are
kept in ``--out``.

    python bench/tune.py --data /path/to/alpagasus_3k_dolly.jsonl     # prints the table, writes OUT/table.md
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def split(data: Path, out: Path, train_rows: int, eval_rows: int) -> tuple[list[dict], Path]:
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    if len(rows) < train_rows + eval_rows:
        raise SystemExit(f"{data} has {len(rows)} rows; the split needs {train_rows + eval_rows}")
    held, train = rows[:eval_rows], rows[eval_rows : eval_rows + train_rows]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.jsonl"
    path.write_text("".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in held))
    return [{"messages": r["messages"]} for r in train], path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="chat JSONL (rows with `messages`)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "tune-bench")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--eval-rows", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sequence-len", type=int, default=128, help="training rows and held-out rows cut here")
    parser.add_argument("--grid-prompt", default="0,0.5,1")
    parser.add_argument("--grid-response", default="0.5,0.75,1")
    parser.add_argument("--report-every", type=int, default=2, help="steps between the search's pruning reports")
    parser.add_argument("--pruner", default="median:1", help="the search's pruner (median:1: from its second trial)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (one: on a shared machine two were slower)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transformers", "httpx", "optuna", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wit_plugin import WITConfig, WITSFTTrainer
    from wit_plugin.demo.model import prepare_default_model
    from wit_plugin.evaluation.compare import CompareSettings
    from wit_plugin.tuning.objective import OBJECTIVES, score_run
    from wit_plugin.tuning.space import Range
    from wit_plugin.tuning.tune import tune_trl

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    model_path = prepare_default_model()
    train, eval_data = split(args.data, out / "data", args.train_rows, args.eval_rows)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = Dataset.from_list(train)
    settings = CompareSettings(eval_data=eval_data, max_length=args.sequence_len)
    prompts = [float(v) for v in args.grid_prompt.split(",")]
    responses = [float(v) for v in args.grid_response.split(",")]
    space = {
        "wit_prompt_weight": Range(min(prompts), max(prompts)),
        "wit_response_weight": Range(min(responses), max(responses)),
    }

    def config(folder: Path, seed: int, **weights: float) -> Any:
        return WITConfig(
            output_dir=str(folder), max_steps=args.steps, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=args.steps,
            save_strategy="no", report_to="none", bf16=False, use_cpu=True, seed=seed, data_seed=seed,
            max_length=args.sequence_len, disable_tqdm=True, wit_preset="wit", **weights,
        )  # fmt: skip

    def build(cfg: Any) -> Any:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        return WITSFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)

    began_all = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    grid_values: dict[tuple[float, float], list[float]] = {}
    for seed in seeds:
        grid, grid_s = [], 0.0
        for p in prompts:
            for r in responses:
                folder = out / f"seed{seed}" / "grid" / f"p{p:g}_r{r:g}"
                done = folder / "score.json"
                if not done.is_file():
                    log(f"seed {seed}: grid λp={p:g} λr={r:g}")
                    began = time.perf_counter()
                    trainer = build(config(folder, seed, wit_prompt_weight=p, wit_response_weight=r))
                    trainer.train()
                    trainer.save_model(str(folder))
                    steps = trainer.state.global_step
                    del trainer
                    value = score_run(folder, [OBJECTIVES["response_ce"]], settings)[0][0]
                    seconds = time.perf_counter() - began
                    done.write_text(json.dumps({"value": value, "steps": steps, "seconds": seconds}))
                score = json.loads(done.read_text())
                grid.append((p, r, score["value"], score["steps"]))
                grid_s += score.get("seconds", 0.0)  # training and scoring, also of points kept from an earlier run
                grid_values.setdefault((p, r), []).append(score["value"])
        grid_steps = sum(g[3] for g in grid)
        budget = grid_steps // 3
        start = time.perf_counter()
        search_out = out / f"seed{seed}" / "search"
        trials, result = 0, None
        while True:
            used = _steps_used(result)
            if used + args.steps > budget:
                break
            trials += 1
            result = tune_trl(
                build, config(out / "unused", seed), eval_data, trials, search_out, space=space,
                compare={"max_length": args.sequence_len}, train_rows=train, tokenizer=tokenizer, seed=seed,
                pruner=args.pruner, report_every=args.report_every,
            )  # fmt: skip
        search_s = time.perf_counter() - start
        best_grid = min(grid, key=lambda g: g[2])
        best = result["best"] if result else None
        states = [t["state"] for t in (result or {"trials": []})["trials"]]
        rows.append(
            {
                "seed": seed, "grid_points": len(grid), "grid_steps": grid_steps, "grid_best": best_grid[2],
                "grid_best_weights": best_grid[:2], "grid_s": grid_s, "search_trials": len(states),
                "search_pruned": states.count("pruned"), "search_steps": _steps_used(result), "budget": budget,
                "search_best": best["objective"] if best else None,
                "search_best_weights": [best["weights"][k] for k in space] if best else None, "search_s": search_s,
            }
        )  # fmt: skip
        log(json.dumps(rows[-1]))
    spread = sum(max(v) - min(v) for v in grid_values.values()) / len(grid_values) if len(seeds) > 1 else None
    table = markdown(rows, spread, args) + f"\nWhole bench: {(time.perf_counter() - began_all) / 60:.1f} min.\n"
    (out / "table.md").write_text(table)
    (out / "bench.json").write_text(json.dumps({"rows": rows, "spread": spread, "args": vars(args)}, default=str))
    print(table)


def _steps_used(result: dict[str, Any] | None) -> int:
    """Training steps the search's trials took (a pruned trial: up to where it stopped)."""
    if result is None:
        return 0
    return sum(t.get("steps") or 0 for t in result["trials"])


def markdown(rows: list[dict[str, Any]], spread: float | None, args: argparse.Namespace) -> str:
    lines = [
        (
            "| seed | grid: runs, steps | grid best (λp, λr) | search: trials (pruned), steps | search best (λp, λr) "
            "| search − grid | within spread | wall grid / search |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        gap = None if row["search_best"] is None else row["search_best"] - row["grid_best"]
        within = "–" if gap is None or spread is None else ("yes" if gap <= spread else "no")
        weights = row["search_best_weights"]
        lines.append(
            f"| {row['seed']} | {row['grid_points']}, {row['grid_steps']} | {row['grid_best']:.4f} "
            f"({row['grid_best_weights'][0]:g}, {row['grid_best_weights'][1]:g}) | {row['search_trials']} "
            f"({row['search_pruned']}), {row['search_steps']} (≤ {row['budget']}) | "
            + (f"{row['search_best']:.4f} ({weights[0]:.2f}, {weights[1]:.2f})" if weights else "–")
            + f" | {'–' if gap is None else f'{gap:+.4f}'} | {within} | {row['grid_s'] / 60:.1f} / "
            f"{row['search_s'] / 60:.1f} min |"
        )
    lines.append("")
    lines.append(
        f"Held-out response CE (nats/token, lower is better) on {args.eval_rows} held-out rows of {args.data.name}, "
        f"{args.train_rows} training rows, LoRA r=8, {args.steps} steps of batch {args.batch}, rows cut at "
        f"{args.sequence_len} tokens. Seed-to-seed spread (mean over grid points of the range across seeds): "
        + (f"{spread:.4f}." if spread is not None else "one seed, none.")
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
