"""``wit tune``: an Optuna search over the role weights of an Axolotl config (see :mod:`wit_plugin.tuning`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wit_plugin import options
from wit_plugin.cli.args import positive_int
from wit_plugin.cli.compare import CROSSTASK_FLAGS

OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"  # where Optuna logs a failed trial, with its traceback
OBJECTIVE_NAMES = "response_ce, instruction_ce, eot_ce, posix, crosstask"  # wit_plugin.tuning.objective.OBJECTIVES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search the role weights of an Axolotl config with Optuna (resumable, several workers, pruning)",
        description=(
            "Each trial trains CONFIG with the weights Optuna suggests into DIR/runs/trial_NNNN (the trial's whole "
            "config in its config.yml, `axolotl train` in a subprocess) and scores it as `wit compare` does on "
            "--eval-data. --trials is the study's total: the same command resumes an interrupted study and runs "
            "only the missing trials; more workers (here or on other machines) join with the same --storage and "
            "--study. Writes DIR/results.json, DIR/best.yml (the best trial's wit_* keys) and DIR/tune.png."
        ),
    )
    parser.add_argument("config", type=Path, help="an Axolotl YAML with plugins: [wit_plugin.WITPlugin]")
    parser.add_argument("--eval-data", required=True, type=Path, help="held-out JSONL the trials are scored on")
    parser.add_argument("--trials", required=True, type=positive_int, help="the study's total number of trials")
    parser.add_argument("--out", required=True, type=Path, help="DIR: runs, study.db, results.json, best.yml")
    parser.add_argument(
        "--objective",
        default="response_ce",
        help=f"what to optimise ({OBJECTIVE_NAMES}); several, comma-separated: a Pareto front (default response_ce)",
    )
    parser.add_argument(
        "--space",
        help="key=low:high,... over the wit_*_weight keys (default: wit_prompt_weight=0:0.5,wit_response_weight=0.5:1, "
        "λp widened to the data's rule-of-thumb point)",
    )
    parser.add_argument(
        "--storage",
        help="an Optuna RDB URL shared by workers, e.g. postgresql+psycopg://USER@HOST/DB "
        "(default: sqlite:///DIR/study.db)",
    )
    parser.add_argument("--study", default="wit-tune", help="the study's name in the storage (default wit-tune)")
    parser.add_argument(
        "--pruner",
        default="median",
        help="median (default; median:K: pruning starts after K trials, default 3), hyperband, none, or threshold:X "
        "(prune a trial once its intermediate score is above X)",
    )
    parser.add_argument("--seed", type=int, default=None, help="the sampler's seed")
    parser.add_argument(
        "--report-every", type=positive_int, help="steps between intermediate scores (default: a quarter of the run)"
    )
    parser.add_argument(
        "--heartbeat", type=positive_int, default=15, help="seconds between a worker's heartbeats; a trial is "
        "failed and retried after 4 missed ones (default 15)",
    )  # fmt: skip
    parser.add_argument("--posix", type=Path, help="POSIX prompt sets (JSONL), for --objective posix")
    parser.add_argument("--pool", type=Path, help="cross-task pool (JSONL), with --targets, for --objective crosstask")
    parser.add_argument("--targets", type=Path, help="cross-task targets (JSONL)")
    options.add_arguments(parser, CROSSTASK_FLAGS)
    parser.add_argument("--max-length", type=positive_int, help="cut held-out rows here (as wit compare does)")
    parser.add_argument("--device", default=None, help="evaluation device (default: cuda when available, else cpu)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from wit_plugin.tuning.space import parse_space
    from wit_plugin.tuning.study import shown_url
    from wit_plugin.tuning.tune import tune_axolotl

    space = parse_space(args.space) if args.space is not None else None  # --space "": refused, not the default
    if bool(args.pool) != bool(args.targets):
        raise ValueError("--pool and --targets go together")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # wit tune logs each trial itself
    optuna_trials = logging.getLogger(OPTUNA_TRIAL_LOGGER)
    quiet = QuietInterrupt()
    optuna_trials.addFilter(quiet)
    compare = {
        "posix": args.posix, "pool": args.pool, "targets": args.targets, "max_length": args.max_length,
        "device": args.device, "crosstask": {name: getattr(args, name) for name in CROSSTASK_FLAGS},
    }  # fmt: skip
    try:
        result = tune_axolotl(
            args.config, args.eval_data, args.trials, args.out, objective=args.objective, space=space, compare=compare,
            storage=args.storage, study=args.study, pruner=args.pruner, seed=args.seed, report_every=args.report_every,
            heartbeat_s=args.heartbeat,
        )  # fmt: skip
    except KeyboardInterrupt:  # the study holds every finished trial; the interrupted one is failed and queued again
        print(
            f"wit tune: interrupted; the study ({shown_url(args.storage) if args.storage else args.out / 'study.db'}) "
            "keeps every finished trial and "
            "queues the interrupted one's weights again: the same command resumes",
            file=sys.stderr,
        )
        return 130
    finally:
        optuna_trials.removeFilter(quiet)
    print(summary(result, args.out))
    return 0 if result["best"] is not None else 1


class QuietInterrupt(logging.Filter):
    """Drops Optuna's report of a trial stopped by Ctrl-C (its ~25-line traceback, then "Trial N failed with value
    None."): ``wit tune`` says in one line what happened and how to resume. Other failures are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False  # the traceback was dropped: its "failed with value" line follows

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted = True
            return False
        if self.interrupted and "failed with value" in record.getMessage():
            self.interrupted = False
            return False
        return True


def summary(result: dict, out: Path) -> str:
    states: dict[str, int] = {}
    for entry in result["trials"]:
        states[entry["state"]] = states.get(entry["state"], 0) + 1
    lines = [f"wit tune: {len(result['trials'])} trial(s): " + ", ".join(f"{n} {s}" for s, n in states.items())]
    best = result["best"]
    if best is None:
        lines.append("no trial completed: see the errors in " + str(out / "results.json"))
    else:
        from wit_plugin.tuning.results import score_text, weights_text

        names = [objective["name"] for objective in result["objectives"]]
        score, weights = score_text(best["objective"], names), weights_text(best["weights"])
        lines.append(f"best: trial {best['number']}, {score}, {weights}")
        lines.append(f"results: {out / 'results.json'}  best keys: {out / 'best.yml'}  plot: {out / 'tune.png'}")
    return "\n".join(lines)
