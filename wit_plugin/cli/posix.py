"""``wit posix``: prompt sensitivity (POSIX) of a model on prompt sets or on variants of instructions."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wit_plugin import options
from wit_plugin.cli.args import add_compute_arguments, apply_threads, positive_int

# Flags that only mean something with --pool: absent is None, so that giving one without --pool is refused.
EXEMPLAR_FLAGS = {"exemplars": "--exemplars", "wit_crosstask_shots": "--shots", "wit_crosstask_select": "--select"}

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

    from wit_plugin.evaluation.posix import POSIXResult
    from wit_plugin.evaluation.posix.exemplars import ExemplarPOSIX


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "posix",
        help="prompt sensitivity index (POSIX) of a causal LM",
        description=(
            "Score how much a model's greedy responses change in likelihood across intent-aligned prompt "
            'variants. --prompts is JSONL: {"prompts": [...]} lines are used as given; instruction rows '
            "('messages', 'instruction' or 'prompt', optional 'paraphrases') are expanded to --num-variants "
            "prompts with the --variants kinds."
        ),
    )
    parser.add_argument("--model", required=True, help="model folder (or PEFT adapter folder)")
    parser.add_argument("--prompts", required=True, type=Path, help="JSONL of prompt sets or instruction rows")
    parser.add_argument("--variants", default="spelling,template", help="kinds: spelling, template, paraphrase")
    parser.add_argument(
        "--num-variants", type=positive_int, default=5, help="prompts per generated set, the original included (N)"
    )
    parser.add_argument("--seed", type=int, default=0)
    options.add_arguments(parser, ["wit_posix_max_new_tokens", "wit_posix_batch_size", "wit_posix_psi"])
    parser.add_argument(
        "--pool", type=Path, help="task file of labelled examples: run POSIX with exemplar blocks from it"
    )
    parser.add_argument(
        "--exemplars",
        default=None,
        help="with --pool: conditions none, cross (other tasks' demos), in-task (the set's own task; sets carry "
        "a 'task') (default: all three)",
    )
    for name in ("wit_crosstask_shots", "wit_crosstask_select"):
        options.add_arguments(parser, [name], unset=options.OPTION_BY_NAME[name].describe_default().strip("`"))
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    add_compute_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the trace (prompts, responses, matrices) here; with --pool after every exemplar condition. "
        "The same command reuses what it holds",
    )
    parser.add_argument("--force", action="store_true", help="recompute even if --out holds the results")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart of per-set psi here")
    parser.set_defaults(run=run)


def summary_table(result: POSIXResult, width: int = 40) -> Table:
    from rich.table import Table

    from wit_plugin.evaluation.posix.prompts import prompt_text

    table = Table(title=f"POSIX = {result.posix:.4f} (ψ: {result.psi_definition})", title_justify="left")
    table.add_column("set", justify="right", no_wrap=True, min_width=3)
    table.add_column("N", justify="right", no_wrap=True, min_width=2)
    table.add_column("psi", justify="right", no_wrap=True, min_width=6)
    table.add_column("tokens", justify="right", no_wrap=True, min_width=6)  # mean response length
    table.add_column("first prompt", overflow="ellipsis", no_wrap=True, max_width=width)
    for index, item in enumerate(result.sets):
        lengths = [len(response.token_ids) for response in item.responses]
        first = " ".join(prompt_text(item.prompts[0]).split())
        table.add_row(
            str(index), str(len(item.prompts)), f"{item.psi:.4f}", f"{sum(lengths) / len(lengths):.1f}", first
        )
    return table


PsiSeries = tuple[Sequence[int], Sequence[float], float]  # indices of the sets evaluated, psi per set, POSIX


def psi_series(result: POSIXResult) -> dict[str, PsiSeries]:
    """The one series of a plain POSIX run."""
    return {"": (range(len(result.sets)), result.psis, result.posix)}


def exemplar_series(outcome: ExemplarPOSIX) -> dict[str, PsiSeries]:
    """One series per exemplar condition that was evaluated (a condition may skip sets: their indices come
    along)."""
    return {
        name: (outcome.evaluated.get(name, range(len(result.psis))), result.psis, result.posix)
        for name, result in outcome.results.items()
    }


def psi_figure(series: Mapping[str, PsiSeries]) -> Figure:
    """ψ per prompt set as bars, a group per set with one bar per condition, and each condition's POSIX (the
    mean) as a dashed line in its colour: which intents the model is most sensitive on, and what exemplars change.
    The legend sits above the axes, clear of the bars."""
    from wit_plugin.figures import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    count = max((max(indices, default=-1) + 1 for indices, _, _ in series.values()), default=0)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.35 * count * max(len(series), 1) + 2), 4.4), dpi=120)
    width = 0.8 / max(len(series), 1)
    for k, (name, (indices, psis, posix)) in enumerate(series.items()):
        colour = f"C{k}"
        offset = (k - (len(series) - 1) / 2) * width
        label = f"{name}: POSIX = {posix:.3f}" if name else "ψ per set"
        axes.bar([i + offset for i in indices], psis, width, color=colour, label=label)
        line_label = None if name else f"POSIX = {posix:.3f}"
        axes.axhline(posix, color=colour if name else "tab:red", linestyle="--", linewidth=1, label=line_label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_xlabel("prompt set")
    axes.set_ylabel("ψ (mean |Δ log P| per token)")
    axes.set_title("Prompt sensitivity per set" + (" by exemplar block (dashed: POSIX)" if len(series) > 1 else ""))
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.1), ncol=min(len(series) + 1, 4), frameon=False, fontsize=8)
    figure.tight_layout()
    return figure


def plot_psi(series: Mapping[str, PsiSeries], path: Path) -> Path:
    """:func:`psi_figure` as a PNG at ``path``."""
    from wit_plugin.figures import save_png

    return save_png(psi_figure(series), path)


def exemplar_table(outcome: ExemplarPOSIX) -> Table:
    from rich.table import Table

    table = Table(title="POSIX by exemplar block", title_justify="left")
    for column in ("exemplars", "sets", "POSIX", "vs none"):
        table.add_column(column, justify="right" if column != "exemplars" else "left", no_wrap=True)
    base = outcome.results.get("none")
    for name, result in outcome.results.items():
        change = f"{result.posix - base.posix:+.4f}" if base is not None and name != "none" else "–"
        table.add_row(name, str(len(result.sets)), f"{result.posix:.4f}", change)
    return table


def check_exemplar_flags(args: argparse.Namespace) -> None:
    """Exemplar flags without ``--pool`` would silently run plain POSIX: refuse them."""
    given = [flag for name, flag in EXEMPLAR_FLAGS.items() if getattr(args, name) is not None]
    if given and args.pool is None:
        raise ValueError(f"{', '.join(given)} given without --pool: exemplar blocks need the task file demos come from")


def print_short_replies(console: Any, result: POSIXResult, label: str = "") -> None:
    """One note when replies of at most one token make ψ rest on a single token's probability."""
    if result.short_replies:
        console.print(f"[yellow]note:[/] {label}{result.short_replies_note()}", highlight=False)


def run(args: argparse.Namespace) -> int:
    from wit_plugin.evaluation.models import check_model_folder
    from wit_plugin.evaluation.resume import Saved, command_key, prepare_outputs

    check_exemplar_flags(args)
    check_model_folder(args.model)
    if not args.prompts.is_file():
        raise FileNotFoundError(f"no prompts file at {args.prompts}")
    prepare_outputs(args.out, args.plot)
    if args.plot:
        import matplotlib  # noqa: F401 - before the evaluation, not after it: the plot needs the `eval` extra

    from wit_plugin.cli.console import make_console
    from wit_plugin.cli.progress import report_progress
    from wit_plugin.evaluation.models import check_device, load_model
    from wit_plugin.evaluation.posix import POSIXResult, POSIXSettings, evaluate_posix
    from wit_plugin.evaluation.posix.variants import load_prompt_sets, parse_kinds, prompt_set_tasks

    device = check_device(args.device)
    posix = POSIXSettings.from_options(vars(args))
    sets = load_prompt_sets(args.prompts, parse_kinds(args.variants), args.num_variants, args.seed)
    apply_threads(args.threads)
    console = make_console()
    console.print(f"{len(sets)} prompt sets, {sum(len(s) for s in sets)} prompts; loading {args.model}")
    saved = Saved(args.out, command_key(args), force=args.force) if args.out else None
    if args.pool:
        from wit_plugin.evaluation.crosstask.tasks import load_items
        from wit_plugin.evaluation.posix.exemplars import (
            EXEMPLAR_CONDITIONS,
            ExemplarPOSIX,
            evaluate_posix_with_exemplars,
            parse_conditions,
        )

        conditions = parse_conditions(args.exemplars or ",".join(EXEMPLAR_CONDITIONS))
        pool = load_items(args.pool)
        done = ExemplarPOSIX.from_dict(saved.previous) if saved and saved.previous else None
        if done is not None:
            console.print(f"resuming from {args.out}: {', '.join(done.results)} done", highlight=False)

        def checkpoint(partial: ExemplarPOSIX) -> None:
            if saved is not None:
                saved.write(partial.to_dict(), list(partial.results), complete=False)

        model, tokenizer = load_model(args.model, device, dtype=args.dtype)
        with report_progress(console, "POSIX under each exemplar block") as progress:
            outcome = evaluate_posix_with_exemplars(
                model,
                tokenizer,
                sets,
                prompt_set_tasks(args.prompts),
                pool,
                conditions,
                options.resolved(vars(args), "wit_crosstask_shots"),
                options.resolved(vars(args), "wit_crosstask_select"),
                args.seed,
                posix,
                done=done,
                checkpoint=checkpoint,
                progress=progress.update,
            )
        if saved is not None:
            saved.write(outcome.to_dict(), list(outcome.results), complete=True)
        for note in outcome.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        for name, result in outcome.results.items():
            print_short_replies(console, result, f"{name}: ")
        console.print(exemplar_table(outcome))
        if args.out:
            console.print(f"trace: {args.out}")
        if args.plot and outcome.results:
            console.print(f"plot:  {plot_psi(exemplar_series(outcome), args.plot)}")
        return 0
    if saved is not None and saved.complete:  # one unit: the whole evaluation, already saved for these inputs
        console.print(f"reusing {args.out} (same model, prompts and flags; --force recomputes)", highlight=False)
        result = POSIXResult.from_dict(saved.previous)
    else:
        model, tokenizer = load_model(args.model, device, dtype=args.dtype)
        with report_progress(console, "POSIX") as progress:
            result = evaluate_posix(model, sets, tokenizer, progress=progress.update, **posix.arguments())
        if saved is not None:
            saved.write(result.to_dict(), ["posix"], complete=True)
    print_short_replies(console, result)
    console.print(summary_table(result))
    if args.out:
        console.print(f"trace: {args.out}")
    if args.plot:
        console.print(f"plot:  {plot_psi(psi_series(result), args.plot)}")
    return 0
