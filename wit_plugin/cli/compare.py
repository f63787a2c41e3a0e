"""``wit compare``: trained runs side by side, on held-out data (per-role CE, POSIX, cross-task accuracy)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wit_plugin import options
from wit_plugin.cli.args import add_compute_arguments, apply_threads, positive_int
from wit_plugin.roles import Role
from wit_plugin.schedules import parse_schedule

if TYPE_CHECKING:
    from rich.table import Table

CROSSTASK_FLAGS = ("wit_crosstask_conditions", "wit_crosstask_shots", "wit_crosstask_limit", "wit_crosstask_select")
ROLES_SHOWN = tuple(role.label for role in (Role.INSTRUCTION, Role.RESPONSE, Role.EOT))
# A run's weights by role label: the instruction weight stands for λp, the response weight for λr.
PROMPT, RESPONSE, TEMPLATE = Role.INSTRUCTION.label, Role.RESPONSE.label, Role.TEMPLATE.label
MARKERS = ("o", "s", "^", "D", "v", "P")  # one per cross-task condition in the plot


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare trained runs (Axolotl or TRL output folders, sweeps) and plain models on held-out data",
        description=(
            "For each run folder (with wit_run.json; a sweep's parent folder stands for its runs): the weights it "
            "trained with, its last training losses, held-out CE per role on --eval-data (tagged as the run tagged "
            "its training data), POSIX on --posix sets and cross-task accuracy (%) on --pool/--targets. A plain "
            "model folder is a reference row. Held-out rows are cut at --max-length, else only beyond a model's "
            "context window: the same rule for every row. With --out, each row is saved as it completes and the "
            "same command resumes from the file."
        ),
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run folders, sweep parent folders or plain model folders")
    parser.add_argument("--eval-data", required=True, type=Path, help="held-out JSONL: messages, prompt/completion...")
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="MODEL",
        help="also evaluate this untrained model as a reference row (repeat for several)",
    )
    parser.add_argument(
        "--posix", type=Path, help="POSIX prompt sets (JSONL), as for `wit posix` with its default variants and tokens"
    )
    options.add_arguments(parser, ["wit_posix_psi"], unset=options.defaults()["wit_posix_psi"])  # None: not given
    parser.add_argument("--pool", type=Path, help="cross-task pool (JSONL), with --targets")
    parser.add_argument("--targets", type=Path, help="cross-task targets (JSONL), with --pool")
    options.add_arguments(parser, CROSSTASK_FLAGS)
    parser.add_argument(
        "--max-length",
        type=positive_int,
        help="cut every model's eval rows here (default: only beyond each model's context window)",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    add_compute_arguments(parser)
    parser.add_argument("--out", type=Path, help="write results JSON here (after every row; resumed from when rerun)")
    parser.add_argument("--force", action="store_true", help="recompute every row even if --out holds it")
    parser.add_argument("--plot", type=Path, help="write a PNG: held-out loss per role, POSIX and accuracy vs λ")
    parser.set_defaults(run=run)


def _weights(entry: dict[str, Any]) -> str:
    weights = entry.get("weights")
    if not weights:
        return "reference" if entry.get("kind") == "reference" else "–"
    prompt, response, template = weights[PROMPT], weights[RESPONSE], weights[TEMPLATE]
    described = f"λp={_weight(prompt)} λr={_weight(response)}" + (
        "" if template == prompt else f" tpl={_weight(template)}"
    )
    return described + (" N=Σw" if entry.get("normalize") == "weights" else "")  # tokens (the paper's N) unmarked


def _weight(value: float | dict[str, Any]) -> str:
    """A recorded weight: ``0.4``, or a schedule as ``1→0.1 (cosine)``."""
    return parse_schedule(value, "weight").describe()


def _fixed_weights(entry: dict[str, Any]) -> bool:
    """A trained run whose λp and λr are numbers: one point on a λ axis (a schedule has no single λ)."""
    weights = entry.get("weights") or {}
    return bool(weights) and not any(isinstance(weights[role], dict) for role in (PROMPT, RESPONSE))


def _value(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (float, int)) and not isinstance(value, bool) else "–"


def _conditions(runs: list[dict[str, Any]]) -> list[str]:
    """The cross-task conditions the rows have, in the options' order (zero-shot first)."""
    found = {k for entry in runs for k in entry.get("crosstask_pct", {}) if "/" not in k}
    order = list(options.CROSSTASK_CONDITIONS)
    return sorted(found, key=lambda name: (order.index(name) if name in order else len(order), name))


def footnotes(results: dict[str, Any]) -> list[str]:
    """One line per row with an error or a note, numbered as the table's note column refers to them."""
    notes = [entry.get("error") or entry.get("note") for entry in results["runs"]]
    lines, number = [], 0
    for entry, text in zip(results["runs"], notes):
        if text:
            number += 1
            lines.append(f"[{number}] {entry['run']}: {text}")
    return lines


def results_table(results: dict[str, Any]) -> Table:
    """One row per model; a row that failed or carries a caveat says so in the note column, its reason in a
    numbered footnote below the table (a long error never squeezes the other rows' numbers)."""
    from rich.table import Table

    runs = results["runs"]
    table = Table(title=f"runs on {results['eval_data']} (held-out CE per role; train: last logged; accuracy in %)")
    table.add_column("run", overflow="fold")  # a long path wraps; the numbers never shrink to "4…"
    table.add_column("weights", no_wrap=True)
    for role in ROLES_SHOWN:
        table.add_column(f"train {role}", justify="right", no_wrap=True)
    for role in ROLES_SHOWN:
        table.add_column(f"eval {role}", justify="right", no_wrap=True)
    table.add_column("rows cut", justify="right", no_wrap=True)
    show_posix = any("posix" in entry for entry in runs)
    conditions = _conditions(runs)
    if show_posix:
        psi = results.get("posix_psi", "paper")
        table.add_column("POSIX" if psi == "paper" else f"POSIX ({psi} ψ)", justify="right", no_wrap=True)
    for condition in conditions:
        table.add_column(f"acc {condition} %", justify="right", no_wrap=True)
    with_notes = any(entry.get("error") or entry.get("note") for entry in runs)
    if with_notes:
        table.add_column("note", no_wrap=True)
    number = 0
    for entry in runs:
        train, held = entry.get("train", {}), entry.get("eval", {})
        cells = [entry["run"], _weights(entry)]
        cells += [_value(train.get(f"wit/loss_{role}")) for role in ROLES_SHOWN]
        cells += [_value(held.get(f"loss_{role}")) for role in ROLES_SHOWN]
        cut = held.get("rows_truncated")
        cells.append("–" if cut is None else f"{cut}/{held['rows']}")
        if show_posix:
            cells.append(_value(entry.get("posix")))
        cells += [_value(entry.get("crosstask_pct", {}).get(condition), 1) for condition in conditions]
        note = ""
        if entry.get("error") or entry.get("note"):
            number += 1
            note = f"[red]failed [{number}][/]" if "error" in entry else f"[yellow]note [{number}][/]"
        table.add_row(*cells, *([note] if with_notes else []))
    return table


def _label(entry: dict[str, Any]) -> str:
    name = Path(entry["run"]).name or entry["run"]
    return f"{name} (reference)" if entry.get("kind") == "reference" else name


def _weight_axis(axis: Any, trained: list[dict[str, Any]]) -> None:
    """λp from 0 to 1 (or the largest weight), and the legend under the axes, clear of the points."""
    largest = max([1.0, *(e["weights"][PROMPT] for e in trained)])
    axis.set_xlim(-0.05 * largest, 1.05 * largest)
    axis.set_xlabel("λp (instruction weight)")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def draw(results: dict[str, Any]) -> Any:
    """The figure: held-out loss per role for each row; POSIX and cross-task accuracy (%, per condition, the
    table's numbers) against λp, trained runs as points (POSIX coloured by λr; a run whose λp or λr follows a
    schedule has no point), reference models as dashed lines."""
    from wit_plugin.figures import pyplot

    plt = pyplot()
    import numpy as np

    from wit_plugin.evaluation.crosstask.report import wrap_label

    runs = [entry for entry in results["runs"] if "eval" in entry]
    trained = [entry for entry in runs if _fixed_weights(entry)]  # runs with scheduled λ: bars only, no λ point
    references = [entry for entry in runs if not entry.get("weights")]
    conditions = _conditions(runs)
    panels = 1 + any("posix" in e for e in runs) + bool(conditions)
    bars_width = max(6.0, 1.0 * len(runs) + 2.5)  # an inch per run: its wrapped name fits under its bars
    figure, axes = plt.subplots(
        1,
        panels,
        figsize=(bars_width + 6 * (panels - 1), 4.8),
        dpi=120,
        squeeze=False,
        gridspec_kw={"width_ratios": [bars_width, *[6] * (panels - 1)]},
    )
    bars = axes[0][0]
    width = 0.8 / len(ROLES_SHOWN)
    for k, role in enumerate(ROLES_SHOWN):
        values = [e["eval"].get(f"loss_{role}", np.nan) for e in runs]
        bars.bar(np.arange(len(runs)) + (k - 1) * width, values, width, label=role)
    labels = [wrap_label(_label(e)) for e in runs]  # level and centred under the run's bars, not slanted off them
    bars.set_xticks(range(len(runs)), labels, fontsize=7, ha="center")
    bars.set_xlim(-0.5, max(len(runs), 1) - 0.5)  # no row evaluated: an empty panel, not a singular axis
    bars.set_ylabel("held-out CE (nats/token)")
    bars.set_title("held-out loss per role")
    # above the axes, not over the bars: "best" still covers a bar when every spot holds one
    bars.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=len(ROLES_SHOWN), frameon=False)
    panel = 1
    lines = ("--", ":", "-.")
    if any("posix" in e for e in runs):
        axis = axes[0][panel]
        panel += 1
        points = [e for e in trained if "posix" in e]
        if points:
            scatter = axis.scatter(
                [e["weights"][PROMPT] for e in points],
                [e["posix"] for e in points],
                c=[e["weights"][RESPONSE] for e in points],
                cmap="viridis",
                label="trained runs",
            )
            figure.colorbar(scatter, ax=axis, label="λr (response)")
        for k, entry in enumerate(e for e in references if "posix" in e):
            axis.axhline(entry["posix"], color="grey", linestyle=lines[k % 3], label=_label(entry))
        _weight_axis(axis, trained)
        axis.set_ylabel("POSIX (lower: less prompt-sensitive)")
        axis.set_title("POSIX against the weights")
    if conditions:
        axis = axes[0][panel]
        colours = plt.get_cmap("tab10")
        for c, condition in enumerate(conditions):
            points = [e for e in trained if condition in e.get("crosstask_pct", {})]
            if points:  # hollow markers of their own shape: runs with equal values stay visible
                axis.scatter(
                    [e["weights"][PROMPT] for e in points],
                    [e["crosstask_pct"][condition] for e in points],
                    marker=MARKERS[c % len(MARKERS)],
                    facecolors="none",
                    edgecolors=colours(c),
                    linewidths=1.5,
                    s=70,
                    label=condition,
                    gid=f"acc {condition}",
                )
            for k, entry in enumerate(e for e in references if condition in e.get("crosstask_pct", {})):
                axis.axhline(  # thinner for later conditions: equal lines still show every colour
                    entry["crosstask_pct"][condition],
                    color=colours(c),
                    linestyle=lines[k % 3],
                    linewidth=max(0.8, 2.8 - 1.0 * c),
                    label=f"{condition}: {_label(entry)}",
                    gid=f"acc {condition}",
                )
        _weight_axis(axis, trained)
        axis.set_ylim(-3, 103)
        axis.set_ylabel("accuracy (%), mean over target tasks")
        axis.set_title("cross-task accuracy per condition")
    figure.tight_layout()
    return figure


def plot(results: dict[str, Any], path: Path) -> Path:
    from wit_plugin.figures import save_png

    return save_png(draw(results), path)


def run(args: argparse.Namespace) -> int:
    from wit_plugin.cli.console import make_console
    from wit_plugin.cli.progress import report_progress
    from wit_plugin.evaluation.compare import RESULTS_VERSION, CompareSettings, compare_runs
    from wit_plugin.evaluation.resume import Saved, command_key, prepare_outputs

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
    prepare_outputs(args.out, args.plot)
    settings = CompareSettings(
        eval_data=args.eval_data,
        references=args.base,
        posix=args.posix,
        posix_options={"wit_posix_psi": args.wit_posix_psi},
        pool=args.pool,
        targets=args.targets,
        crosstask={name: getattr(args, name) for name in CROSSTASK_FLAGS},
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
    )
    key = command_key(args, ignore=("runs", "base"), version=RESULTS_VERSION)  # each row checks its own model
    saved = Saved(args.out, key, force=args.force) if args.out else None
    apply_threads(args.threads)
    console = make_console()
    with report_progress(console, "compare") as progress:
        results = compare_runs(args.runs, settings, progress=progress.stage, saved=saved, count=progress.update)
    console.print(results_table(results))
    for line in footnotes(results):
        console.print(line, highlight=False, soft_wrap=True)
    if args.out:
        console.print(f"results: {args.out}")
    if args.plot:
        console.print(f"plot:    {plot(results, args.plot)}")
    failed = sum("error" in entry for entry in results["runs"])
    if failed:
        console.print(f"[red]{failed} of {len(results['runs'])} rows could not be evaluated[/] (see the notes)")
    return 1 if failed else 0
