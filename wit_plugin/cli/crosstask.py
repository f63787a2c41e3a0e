"""``wit crosstask``: accuracy on novel tasks with in-context demos from other tasks (ACL 2024)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wit_plugin import options
from wit_plugin.cli.args import add_compute_arguments, apply_threads

FLAGS = tuple(name for name, option in options.OPTION_BY_NAME.items() if option.group == "crosstask" and option.flag)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "crosstask",
        help="cross-task in-context accuracy: demos from other tasks, in-task gold and pseudo-labelled demos",
        description=(
            "Evaluate a causal LM on the --targets items under each condition: zero-shot; cross (demos of one other "
            "task, every source task in turn); mixed (one demo from each of K tasks); random cross-task demos; gold "
            "in-task demos; pseudo (the same in-task rows labelled by cross-task majority vote). Task files are "
            'JSONL rows {"task", "input", "label", "options"?, "definition"?, "id"?}.'
        ),
    )
    parser.add_argument("--model", required=True, help="model folder (or PEFT adapter folder)")
    parser.add_argument("--pool", required=True, type=Path, help="JSONL of labelled examples: where demos come from")
    parser.add_argument("--targets", required=True, type=Path, help="JSONL of items to evaluate")
    options.add_arguments(parser, FLAGS)
    parser.add_argument(
        "--activations",
        action="store_true",
        help="run the activation analysis with --select lexical or random too (embeds the pool with the model; "
        "with similar selection it always runs, the hidden states being there anyway)",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    add_compute_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        help="write the trace JSON (every item, prompt ids, option log-probs), after every condition; the same "
        "command resumes from it",
    )
    parser.add_argument("--force", action="store_true", help="recompute every condition even if --out holds it")
    parser.add_argument("--plot", type=Path, help="write a PNG: accuracy bars and the source x target gain map")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from wit_plugin.evaluation.models import check_model_folder

    check_model_folder(args.model)
    if args.plot:
        import matplotlib  # noqa: F401 - before the evaluation, not after it: the plot needs the `eval` extra

    from wit_plugin.cli.console import make_console
    from wit_plugin.cli.progress import report_progress
    from wit_plugin.evaluation.crosstask import CrossTaskSettings, evaluate_crosstask, load_items
    from wit_plugin.evaluation.crosstask.analysis import CrossTaskResult
    from wit_plugin.evaluation.crosstask.report import (
        activation_note,
        activation_table,
        gain_table,
        plot,
        results_table,
    )
    from wit_plugin.evaluation.crosstask.select import model_cache_key
    from wit_plugin.evaluation.models import check_device, load_model
    from wit_plugin.evaluation.resume import Saved, command_key, prepare_outputs

    device = check_device(args.device)
    prepare_outputs(args.out, args.plot)
    settings = CrossTaskSettings.from_options({name: getattr(args, name) for name in FLAGS})
    pool, targets = load_items(args.pool), load_items(args.targets)
    apply_threads(args.threads)
    console = make_console()
    saved = Saved(args.out, command_key(args), force=args.force) if args.out else None
    reuse = saved.done if saved else []
    if reuse:
        console.print(f"resuming from {args.out}: {', '.join(reuse)} done", highlight=False)

    def checkpoint(partial: CrossTaskResult, done: list[str]) -> None:
        if saved is not None:
            saved.write(partial.to_dict(), done, complete=False)

    console.print(
        f"{len(pool)} pool rows of {len({p.task for p in pool})} tasks, {len(targets)} targets of "
        f"{len({t.task for t in targets})} tasks; loading {args.model}",
        highlight=False,
    )
    model, tokenizer = load_model(args.model, device, dtype=args.dtype)
    with report_progress(console, "cross-task") as progress:
        result = evaluate_crosstask(
            model,
            tokenizer,
            pool,
            targets,
            settings,
            progress=progress.update,
            embedding_cache_key=model_cache_key(args.model),
            activations=True if args.activations else None,
            previous=saved.previous if saved else None,
            reuse=reuse,
            checkpoint=checkpoint if saved else None,
        )
    if saved is not None:
        saved.write(result.to_dict(), list(settings.conditions), complete=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(results_table(result))
    if result.gain_matrix["sources"]:
        console.print(gain_table(result))
    note = activation_note(result)
    if note:
        console.print(note, highlight=False)
    else:
        console.print(activation_table(result))
    if result.pseudo_labels:
        correct = sum(r["correct"] for r in result.pseudo_labels)
        console.print(f"pseudo-labels: {correct} of {len(result.pseudo_labels)} equal the gold label")
    if args.out:
        console.print(f"trace: {args.out}")
    if args.plot:
        console.print(f"plot:  {plot(result, args.plot)}")
    return 0
