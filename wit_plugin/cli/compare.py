"""``wit compare``: trained runs side by side, on held-out data (per-role CE, POSIX, cross-task accuracy)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wit_plugin import options
from wit_plugin.cli.args import positive_int

if TYPE_CHECKING:
    from rich.table import Table

CROSSTASK_FLAGS = ("wit_crosstask_conditions", "wit_crosstask_shots", "wit_crosstask_limit", "wit_crosstask_select")
ROLES_SHOWN = ("instruction", "response", "eot")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare trained runs (Axolotl or TRL output folders, sweeps) on held-out data",
        description=(
            "For each run folder (with wit_run.json; a sweep's parent folder stands for its runs): the weights it "
            "trained with, its last training losses, held-out CE per role on --eval-data (tagged as the run tagged "
            "its training data), POSIX on --posix sets and cross-task accuracy on --pool/--targets."
        ),
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run folders or sweep parent folders")
    parser.add_argument("--eval-data", required=True, type=Path, help="held-out JSONL: messages, prompt/completion...")
    parser.add_argument("--base", help="also evaluate this untrained model (a reference row)")
    parser.add_argument("--posix", type=Path, help="POSIX prompt sets (JSONL), as for `wit posix`")
    options.add_arguments(parser, ["wit_posix_psi"], unset=options.defaults()["wit_posix_psi"])  # None: not given
    parser.add_argument("--pool", type=Path, help="cross-task pool (JSONL), with --targets")
    parser.add_argument("--targets", type=Path, help="cross-task targets (JSONL), with --pool")
    options.add_arguments(parser, CROSSTASK_FLAGS)
    parser.add_argument("--max-length", type=positive_int, help="cut eval rows here (default: each run's own)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, help="write results JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG: held-out loss per role, POSIX and accuracy vs λ")
    parser.set_defaults(run=run)


def _weights(entry: dict[str, Any]) -> str:
    weights = entry.get("weights")
    if not weights:
        return "–"
    prompt, response = weights["instruction"], weights["response"]
    return f"λp={prompt:g} λr={response:g}" + ("" if weights["template"] == prompt else f" tpl={weights['template']:g}")


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "–"


def results_table(results: dict[str, Any]) -> Table:
    from rich.table import Table

    runs = results["runs"]
    table = Table(title=f"runs on {results['eval_data']} (held-out CE per role; train: last logged)")
    table.add_column("run", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    for role in ROLES_SHOWN:
        table.add_column(f"train {role}", justify="right")
    for role in ROLES_SHOWN:
        table.add_column(f"eval {role}", justify="right")
    table.add_column("eval WIT loss", justify="right")
    show_posix = any("posix" in entry for entry in runs)
    conditions = sorted({k for entry in runs for k in entry.get("crosstask", {}) if "/" not in k})
    if show_posix:
        psi = results.get("posix_psi", "paper")
        table.add_column("POSIX" if psi == "paper" else f"POSIX ({psi} ψ)", justify="right")
    for condition in conditions:
        table.add_column(f"acc {condition}", justify="right")
    for entry in runs:
        if "error" in entry:
            table.add_row(entry["run"], f"[red]{entry['error']}[/]")
            continue
        train, held = entry.get("train", {}), entry.get("eval", {})
        cells = [entry["run"], _weights(entry)]
        cells += [_value(train.get(f"wit/loss_{role}")) for role in ROLES_SHOWN]
        cells += [_value(held.get(f"loss_{role}")) for role in ROLES_SHOWN]
        cells.append(_value(held.get("loss")))
        if show_posix:
            cells.append(_value(entry.get("posix")))
        cells += [_value(entry.get("crosstask", {}).get(condition)) for condition in conditions]
        table.add_row(*cells)
    return table


def plot(results: dict[str, Any], path: Path) -> Path:
    """Held-out loss per role for each run; POSIX and cross-task accuracy against λp (colour: λr)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [entry for entry in results["runs"] if "eval" in entry]
    trained = [entry for entry in runs if entry.get("weights")]
    panels = 1 + any("posix" in e for e in trained) + any("crosstask" in e for e in trained)
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.6), dpi=120, squeeze=False)
    bars = axes[0][0]
    names = [Path(e["run"]).name if e.get("weights") else "base" for e in runs]
    width = 0.8 / len(ROLES_SHOWN)
    for k, role in enumerate(ROLES_SHOWN):
        values = [e["eval"].get(f"loss_{role}", np.nan) for e in runs]
        bars.bar(np.arange(len(runs)) + (k - 1) * width, values, width, label=role)
    bars.set_xticks(range(len(runs)), names, rotation=35, ha="right", fontsize=7)
    bars.set_ylabel("held-out CE (nats/token)")
    bars.set_title("held-out loss per role")
    bars.legend()
    panel = 1
    for metric, label in (("posix", "POSIX"), ("crosstask", "cross-task accuracy")):
        points = [e for e in trained if metric in e]
        if not points:
            continue
        axis = axes[0][panel]
        panel += 1
        values = [
            e["posix"] if metric == "posix" else float(np.mean([v for k, v in e["crosstask"].items() if "/" not in k]))
            for e in points
        ]
        scatter = axis.scatter(
            [e["weights"]["instruction"] for e in points],
            values,
            c=[e["weights"]["response"] for e in points],
            cmap="viridis",
        )
        figure.colorbar(scatter, ax=axis, label="λr (response)")
        axis.set_xlabel("λp (instruction weight)")
        axis.set_ylabel(label)
        axis.set_title(f"{label} against the weights")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def run(args: argparse.Namespace) -> int:
    from wit_plugin.cli.console import make_console
    from wit_plugin.evaluation.compare import CompareSettings, compare_runs, write_results

    if args.plot:
        import matplotlib  # noqa: F401 - before the evaluation, not after it: the plot needs the `eval` extra
    if not args.runs and not args.base:
        raise ValueError("give run folders, --base, or both")
    if args.wit_posix_psi and not args.posix:
        raise ValueError("--psi chooses how POSIX is computed, and no POSIX is computed without --posix")
    if bool(args.pool) != bool(args.targets):
        raise ValueError("--pool and --targets go together")
    if not args.eval_data.is_file():
        raise FileNotFoundError(f"no eval data at {args.eval_data}")
    settings = CompareSettings(
        eval_data=args.eval_data,
        base=args.base,
        posix=args.posix,
        posix_psi=args.wit_posix_psi or options.defaults()["wit_posix_psi"],
        pool=args.pool,
        targets=args.targets,
        crosstask={name: getattr(args, name) for name in CROSSTASK_FLAGS},
        max_length=args.max_length,
        device=args.device,
    )
    console = make_console()
    with console.status("comparing") as status:
        results = compare_runs(args.runs, settings, progress=lambda text: status.update(text))
    console.print(results_table(results))
    if args.out:
        console.print(f"results: {write_results(results, args.out)}")
    if args.plot:
        console.print(f"plot:    {plot(results, args.plot)}")
    failed = [entry for entry in results["runs"] if "error" in entry]
    for entry in failed:
        console.print(f"[red]{entry['run']}[/]: {entry['error']}", highlight=False)
    return 1 if failed else 0
