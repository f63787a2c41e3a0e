"""End to end: Axolotl training throughput and peak memory with the WIT plugin vs without, one run each.

    python bench/axolotl_e2e.py [--steps 10] [--loss-impl chunked]

Same config (SmolLM2-135M, generated data, sample packing on), same steps; the stock run uses Axolotl's own
chat_template strategy and loss. Prints tokens/s (total tokens / train_runtime), peak RSS of the training
process and the ratios plugin / stock (target: throughput >= 0.98x).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from wit_plugin.demo.data import write_dataset
from wit_plugin.demo.model import prepare_default_model

REPO = Path(__file__).resolve().parents[1]


def run(workdir: Path, steps: int, plugin: bool, loss_impl: str | None) -> tuple[float, float]:
    """Train once in a fresh process; return (tokens per second, peak RSS in GiB)."""
    cfg = yaml.safe_load((REPO / "yaml_examples" / "wit_smollm2_cpu.yml").read_text())
    cfg.update(
        base_model=str(prepare_default_model()),
        output_dir=str(workdir / "out"),
        max_steps=steps,
        dataset_prepared_path=str(workdir / "prepared"),
        logging_steps=steps,
        sample_packing=True,
        gradient_accumulation_steps=1,
        include_tkps=True,
    )
    cfg["datasets"][0]["path"] = str(write_dataset(workdir / "data.jsonl", count=400, seed=0))
    if not plugin:
        for key in [k for k in cfg if k.startswith("wit_")] + ["plugins"]:
            cfg.pop(key)
    elif loss_impl:
        cfg["wit_loss_impl"] = loss_impl
    config = workdir / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    # a wrapper process per run, so RUSAGE_CHILDREN's max RSS is this run's alone
    probe = (
        "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "axolotl", "train", str(config)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(output[-4000:])
    summary = ast.literal_eval(re.findall(r"^\{'train_runtime'.*\}$", output, flags=re.MULTILINE)[-1])
    step_log = ast.literal_eval(re.findall(r"^\{'loss'.*\}$", output, flags=re.MULTILINE)[-1])
    tokens = float(step_log["tokens/total"])
    peak_kb = int(re.findall(r"PEAK_RSS_KB (\d+)", output)[-1])
    return tokens / float(summary["train_runtime"]), peak_kb / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--loss-impl", default=None, help="wit_loss_impl for the plugin run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, plugin in (("stock", False), ("wit", True)):
            workdir = Path(tmp) / name
            workdir.mkdir()
            results[name] = run(workdir, args.steps, plugin, args.loss_impl)
            print(f"{name:6s}: {results[name][0]:8.1f} tokens/s   peak RSS {results[name][1]:.2f} GiB", flush=True)
    (stock_speed, stock_rss), (wit_speed, wit_rss) = results["stock"], results["wit"]
    print(f"ratio wit/stock: throughput {wit_speed / stock_speed:.3f}x   peak RSS {wit_rss / stock_rss:.3f}x")


if __name__ == "__main__":
    main()
