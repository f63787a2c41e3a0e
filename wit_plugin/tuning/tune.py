"""A tuning: the study's trials, run one after another by this worker until the study has its total.

:func:`tune_axolotl` (``wit tune``) and :func:`tune_trl` (a Python API: a function building a trainer from a
``WITConfig``) set up a runner and call :func:`run_tuning`; other workers run the same call against the same
storage. Each trial: suggest the weights (the space's keys), train (the runner), score the run as ``wit compare``
does (:mod:`.objective`), and log one line per step; ``results.json``, ``best.yml`` and the plot are rewritten
after every trial, from the study itself (:mod:`.results`).
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wit_plugin.jsonl import check_jsonl
from wit_plugin.tuning import study as studies
from wit_plugin.tuning.objective import Objective, check_inputs, parse_objectives, score_run
from wit_plugin.tuning.results import score_text, weights_text, write_outputs
from wit_plugin.tuning.space import Space, check_space_applies, default_space, first_trials, format_space

log = logging.getLogger(__name__)
RUNS = "runs"
WAIT_S = 5  # how often a worker looks again while other workers' trials hold the last places


@dataclass
class Tuning:
    """What a tuning needs besides its runner (``wit tune``'s flags)."""

    out: Path
    trials: int
    settings: Any  # CompareSettings: the eval data and what else the objectives need
    objectives: Sequence[Objective]
    space: Space
    first: list[dict[str, float]] = field(default_factory=list)  # enqueued when the study is new
    storage: str | None = None  # default: sqlite in ``out``
    study: str = studies.DEFAULT_STUDY
    pruner: str = "median"
    seed: int | None = None
    report_every: int | None = None
    heartbeat_s: int = studies.HEARTBEAT_S
    plot: bool = True
    meta: dict[str, Any] = field(default_factory=dict)  # what else must match when the study is resumed

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / studies.STORAGE_FILE).resolve()}"


def _duration(seconds: float) -> str:
    from wit_plugin.cli.progress import duration

    return duration(seconds)


def run_tuning(runner: Any, tuning: Tuning) -> dict[str, Any]:
    """Runs trials until the study has ``tuning.trials`` (see :mod:`.study`); returns results.json's document.
    The inputs were checked by :func:`_tune`, before anything heavy loaded."""
    tuning.out.mkdir(parents=True, exist_ok=True)
    multi = len(tuning.objectives) > 1
    pruner = "none" if multi else tuning.pruner
    if multi and tuning.pruner != "none":
        log.info(
            "wit tune: %d objectives: Optuna prunes single-objective studies only, so no pruning",
            len(tuning.objectives),
        )
    storage = studies.make_storage(tuning.storage_url, tuning.heartbeat_s)
    meta = {
        "objectives": [o.name for o in tuning.objectives],
        "space": format_space(tuning.space),
        "framework": runner.framework,
        "scored_on": scored_on(tuning.settings),
        **tuning.meta,
    }
    with studies.worker_lock(tuning.storage_url):  # one worker creates the study and queues its first trials
        study, new = studies.open_study(
            tuning.study, storage, [o.direction for o in tuning.objectives], meta,
            studies.make_sampler(tuning.seed, len(tuning.objectives)), studies.make_pruner(pruner),
        )  # fmt: skip
        if new:
            for point in tuning.first:
                study.enqueue_trial(point, skip_if_exists=True)
            if tuning.first:
                log.info("wit tune: first trials (literature priors): %s", "; ".join(map(weights_text, tuning.first)))
    studies.serialise_ask(study, tuning.storage_url)
    log.info(
        "wit tune: study %r in %s, %d trial(s) in all",
        tuning.study,
        studies.shown_url(tuning.storage_url),
        tuning.trials,
    )
    objective = _trial_objective(runner, tuning, study, pruner)
    try:
        while True:
            left, running = studies.slots_left(study, tuning.trials)
            if left <= 0 and not running:
                break
            if left <= 0:  # the last places are other workers' (or stale ones, failed once their grace ends)
                time.sleep(WAIT_S)
                continue
            study.optimize(objective, n_trials=1, catch=(Exception,))
            write_outputs(study, tuning)
    finally:
        document = write_outputs(study, tuning)
    return document


def _trial_objective(runner: Any, tuning: Tuning, study: Any, pruner: str) -> Callable[[Any], Any]:
    import optuna

    def objective(trial: Any) -> Any:
        start = time.monotonic()
        weights: dict[str, float] = {}
        try:
            if studies.is_surplus(study, trial.number, tuning.trials):
                trial.set_user_attr(studies.SURPLUS, True)
                log.info("wit tune: trial %d is past the study's %d (another worker took the place)", trial.number,
                         tuning.trials)  # fmt: skip
                return None  # failed by Optuna (no value), and left out of the results
            weights = {key: trial.suggest_float(key, r.low, r.high) for key, r in tuning.space.items()}
            values, row = _train_and_score(runner, tuning, study, trial, weights, pruner, start)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # failed by Optuna; its weights are queued for the resumed tuning
            trial.set_user_attr(studies.INTERRUPTED, True)
            if weights:
                study.enqueue_trial(weights, user_attrs={studies.RETRY_OF: trial.number})
            raise
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            trial.set_user_attr(studies.ERROR, message)
            log.error("wit tune: trial %d failed: %s", trial.number, message)
            raise
        trial.set_user_attr(studies.ROW, {k: row[k] for k in ("eval", "posix", "crosstask_pct") if k in row})
        scores = score_text(dict(zip([o.name for o in tuning.objectives], values)), [])
        log.info("wit tune: trial %d complete: %s, %s", trial.number, scores, _duration(time.monotonic() - start))
        return values[0] if len(values) == 1 else values

    return objective


def _train_and_score(
    runner: Any, tuning: Tuning, study: Any, trial: Any, weights: dict[str, float], pruner: str, start: float
) -> tuple[list[float], dict[str, Any]]:
    """Trains the trial's run (raising ``TrialPruned`` if the pruner stopped it) and scores it."""
    import optuna

    from wit_plugin.tuning.pruning import TrialLink, settings_dict  # transformers: after every input is checked

    folder = (tuning.out / RUNS / f"trial_{trial.number:04d}").resolve()
    shutil.rmtree(folder, ignore_errors=True)  # a half-written run of the same number (a lost worker)
    retry_of = studies.retry_of(studies.frozen(study, trial.number))
    trial.set_user_attr(studies.RUN, str(folder))
    trial.set_user_attr(studies.WIT_KEYS, runner.wit_keys(weights))
    done = sum(t.state.is_finished() and studies.counts(t) for t in study.get_trials(deepcopy=False))
    log.info(
        "wit tune: trial %d (%d of %d done): %s%s → %s", trial.number, done, tuning.trials, weights_text(weights),
        "" if retry_of is None else f" (retry of trial {retry_of})", folder,
    )  # fmt: skip
    link = TrialLink(
        storage=tuning.storage_url, study=tuning.study, trial_id=trial._trial_id, pruner=pruner,
        objective=tuning.objectives[0].name, settings=settings_dict(tuning.settings),
        report_every=tuning.report_every if pruner != "none" else 0,
    )  # fmt: skip
    outcome = runner.train(weights, folder, link, trial)
    trial.set_user_attr(studies.STEPS, outcome.steps)
    if outcome.pruned is not None:
        trial.set_user_attr(studies.PRUNED_AT, outcome.pruned["step"])
        log.info(
            "wit tune: trial %d pruned at step %d (%s %.4f), %s", trial.number, outcome.pruned["step"],
            tuning.objectives[0].name, outcome.pruned["value"], _duration(time.monotonic() - start),
        )  # fmt: skip
        raise optuna.TrialPruned(f"pruned at step {outcome.pruned['step']}")
    return score_run(folder, tuning.objectives, tuning.settings)


def scored_on(settings: Any) -> dict[str, Any]:
    """What a trial's objective depends on besides its weights: the held-out data files (by content: workers on
    other machines keep them in other folders) and how they are scored. A resumed study must keep it."""
    from wit_plugin.evaluation.resume import file_digest

    files = {key: getattr(settings, key) for key in ("eval_data", "posix", "pool", "targets")}
    return {
        **{key: {"file": path.name, "sha256": file_digest(path)} for key, path in files.items() if path is not None},
        "max_length": settings.max_length,
        "dtype": settings.dtype,
        "posix_options": dict(settings.posix_options),
        "crosstask": dict(settings.crosstask),
    }


def _settings(eval_data: Path, **compare: Any) -> Any:
    from wit_plugin.evaluation.compare import CompareSettings

    return CompareSettings(eval_data=Path(eval_data), **compare)


def tune_axolotl(
    config: Path,
    eval_data: Path,
    trials: int,
    out: Path,
    objective: str = "response_ce",
    space: Space | None = None,
    compare: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``wit tune``: each trial trains ``config`` (an Axolotl YAML with the plugin) through ``axolotl train``.
    ``compare``: CompareSettings fields besides the eval data (posix, pool, targets, max_length...);
    ``options``: :class:`Tuning` fields (storage, study, pruner, seed, report_every, heartbeat_s, plot)."""
    from wit_plugin.tuning.runners import AxolotlRunner

    runner = AxolotlRunner(config, cwd=cwd)
    ratio = functools.partial(_axolotl_length_ratio, runner.config, cwd or Path.cwd())
    return _tune(runner, eval_data, trials, out, objective, space, compare, ratio, {"config": str(config)}, options)


def tune_trl(
    build: Callable[[Any], Any],
    config: Any,
    eval_data: Path,
    trials: int,
    out: Path,
    objective: str = "response_ce",
    space: Space | None = None,
    compare: Mapping[str, Any] | None = None,
    train_rows: Sequence[Mapping[str, Any]] | None = None,
    tokenizer: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """The TRL entry point: ``build(config) -> trainer`` makes a ``WITSFTTrainer`` training with the
    ``WITConfig`` it is given (the trial's copy of ``config``: its weights and ``output_dir``), in this process.
    With ``train_rows`` and ``tokenizer``, the length-ratio rule of thumb chooses the first trial."""
    from wit_plugin.tuning.priors import length_ratio
    from wit_plugin.tuning.runners import TrlRunner

    runner = TrlRunner(build, config)
    measured = train_rows is not None and tokenizer is not None
    ratio = functools.partial(length_ratio, train_rows, tokenizer) if measured else lambda: None
    return _tune(runner, eval_data, trials, out, objective, space, compare, ratio, {}, options)


def _tune(
    runner: Any,
    eval_data: Path,
    trials: int,
    out: Path,
    objective: str,
    space: Space | None,
    compare: Mapping[str, Any] | None,
    measure: Callable[[], Any],
    meta: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Checks every input (cheap) before ``measure`` (the length ratio: a tokenizer, the training rows) runs."""
    if trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}")
    if not Path(eval_data).is_file():
        raise FileNotFoundError(f"no eval data at {eval_data}")
    if not check_jsonl(eval_data):  # a bad line names file:line here, not in every trial once it has trained
        raise ValueError(f"{eval_data} has no rows")
    objectives = parse_objectives(objective)
    check_inputs(objectives, compare or {})
    studies.check_pruner(options.get("pruner", "median"))
    studies.check_storage(options.get("storage"))
    check_space_applies(space, runner.wit_values, runner.where)
    settings = _settings(eval_data, **(compare or {}))  # imports transformers
    ratio = measure()
    rule = None
    if ratio is not None:
        rule = ratio.prompt_weight
        log.info("wit tune: %s", ratio.describe())
    else:
        log.info("wit tune: no training rows measured: no rule-of-thumb prompt weight, first trial λp=0 λr=1")
    chosen = space or default_space(rule)
    if space is None:
        log.info("wit tune: default space (literature priors): %s", format_space(chosen))
    tuning = Tuning(
        out=Path(out), trials=trials, settings=settings, objectives=objectives, space=chosen, first=first_trials(chosen, rule), meta=meta, **options,
    )  # fmt: skip
    return run_tuning(runner, tuning)


def _axolotl_length_ratio(config: Mapping[str, Any], cwd: Path) -> Any:
    """The length ratio of the config's local JSON(L) datasets, with the base model's tokenizer (None, with a
    log line, when they or it cannot be read here)."""
    from wit_plugin.jsonl import read_jsonl
    from wit_plugin.tuning.priors import ROWS_READ, length_ratio

    rows: list[Any] = []
    for dataset in config.get("datasets") or []:
        path = Path(str(dataset.get("path", "")))
        path = path if path.is_absolute() else cwd / path
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            for count, (_, row) in enumerate(read_jsonl(path)):
                if count >= ROWS_READ:
                    break
                rows.append(row)
    if not rows:
        log.info("wit tune: no local JSONL dataset in the config to measure the length ratio on")
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.get("tokenizer_config") or config["base_model"])
    except Exception as error:  # noqa: BLE001 - the rule of thumb is optional
        log.info("wit tune: cannot load the tokenizer to measure the length ratio (%s)", error)
        return None
    return length_ratio(rows, tokenizer)
