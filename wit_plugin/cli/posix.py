"""``wit posix``: prompt sensitivity (POSIX) of a model on prompt sets or on variants of instructions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wit_plugin import options
from wit_plugin.cli.args import positive_int

if TYPE_CHECKING:
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
    parser.add_argument("--model", required=True, help="Hugging Face model folder or id")
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
        default="none,cross,in-task",
        help="with --pool: conditions none, cross (other tasks' demos), in-task (the set's own task; sets carry "
        "a 'task') (default none,cross,in-task)",
    )
    options.add_arguments(parser, ["wit_crosstask_shots", "wit_crosstask_select"])
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the trace (prompts, responses, matrices) here")
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


def plot_psi(result: POSIXResult, path: Path) -> Path:
    """A bar per set with the POSIX mean as a line: which intents the model is most sensitive on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(max(6.0, 0.45 * len(result.sets) + 2), 4), dpi=120)
    axes.bar(range(len(result.sets)), result.psis, color="tab:blue")
    axes.axhline(result.posix, color="tab:red", linestyle="--", label=f"POSIX = {result.posix:.3f}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("prompt set")
    axes.set_ylabel("ψ (mean |Δ log P| per token)")
    axes.set_title("Prompt sensitivity per set")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


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


def run(args: argparse.Namespace) -> int:
    import json

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wit_plugin.cli.console import make_console
    from wit_plugin.evaluation.models import load_model
    from wit_plugin.evaluation.posix import evaluate_posix
    from wit_plugin.evaluation.posix.variants import load_prompt_sets, parse_kinds, prompt_set_tasks

    if not args.prompts.is_file():
        raise FileNotFoundError(f"no prompts file at {args.prompts}")
    if args.plot:
        import matplotlib  # noqa: F401 - before the evaluation, not after it: the plot needs the `eval` extra
    if args.device:
        try:
            torch.device(args.device)
        except RuntimeError as error:
            raise ValueError(f"--device {args.device!r}: {error}") from None
    sets = load_prompt_sets(args.prompts, parse_kinds(args.variants), args.num_variants, args.seed)
    console = make_console()
    console.print(f"{len(sets)} prompt sets, {sum(len(s) for s in sets)} prompts; loading {args.model}")
    if args.pool:
        from wit_plugin.evaluation.crosstask.tasks import load_items
        from wit_plugin.evaluation.posix.exemplars import evaluate_posix_with_exemplars, parse_conditions

        conditions, pool = parse_conditions(args.exemplars), load_items(args.pool)
        model, tokenizer = load_model(args.model, args.device)
        with console.status("POSIX under each exemplar block"):
            outcome = evaluate_posix_with_exemplars(
                model,
                tokenizer,
                sets,
                prompt_set_tasks(args.prompts),
                pool,
                conditions,
                args.wit_crosstask_shots,
                args.wit_crosstask_select,
                args.seed,
                args.wit_posix_max_new_tokens,
                args.wit_posix_batch_size,
                psi_definition=args.wit_posix_psi,
            )
        for note in outcome.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        console.print(exemplar_table(outcome))
        if args.out:
            args.out.write_text(json.dumps(outcome.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            console.print(f"trace: {args.out}")
        if args.plot and "none" in outcome.results:
            console.print(f"plot:  {plot_psi(outcome.results['none'], args.plot)}")
        return 0
    model, tokenizer = load_model(args.model, args.device)
    columns = (TextColumn("POSIX"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("posix", total=None)
        result = evaluate_posix(
            model,
            sets,
            tokenizer,
            max_new_tokens=args.wit_posix_max_new_tokens,
            batch_size=args.wit_posix_batch_size,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            psi_definition=args.wit_posix_psi,
        )
    console.print(summary_table(result))
    if args.out:
        console.print(f"trace: {result.write_trace(args.out)}")
    if args.plot:
        console.print(f"plot:  {plot_psi(result, args.plot)}")
    return 0
