"""The Optuna study of a tuning: its storage, sampler and pruner, and the study's total of trials.

* Storage: a SQLite file in the output folder by default, or any Optuna RDB URL (``postgresql+psycopg://...``)
  shared by workers on several machines. Heartbeats are on: a trial whose worker died (killed, machine lost) stops
  beating, is marked failed by the next worker that starts a trial (Optuna's ``fail_stale_trials``), and Optuna's
  ``RetryFailedTrialCallback`` enqueues it again with the same weights.
* The total (``--trials N``) counts the trials that ended (complete, pruned, or failed with an error) and those
  running; a failed trial without an error of its own (its worker died, or Ctrl-C) does not count, its retry does.
  :func:`slots_left` is checked before each trial; two workers that start a trial at the same moment past the
  total are told apart by trial number (:func:`is_surplus`): the later one ends at once, failed and marked
  ``surplus``, without training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STORAGE_FILE = "study.db"
DEFAULT_STUDY = "wit-tune"
HEARTBEAT_S = 15  # a worker's heartbeat interval; its trial is stale after GRACE_FACTOR missed beats
GRACE_FACTOR = 4
MAX_RETRY = 2  # retries of a trial whose worker died (each one again stale: a trial that kills its worker)
PRUNERS = ("median", "hyperband", "none")  # median:K (K trials before pruning), threshold:X (prune above X)
STARTUP_TRIALS = 3  # random (or enqueued) trials before TPE models the results; a pruner's warm-up likewise
META = "wit_tune"  # the study's user attribute: what it tunes, checked when a study is resumed

# user attributes of a trial
RUN, ERROR, INTERRUPTED, SURPLUS, RETRY_OF, WIT_KEYS, PRUNED_AT, ROW, STEPS = (
    "run", "error", "interrupted", "surplus", "retry_of", "wit_keys", "pruned_at", "compare", "steps"
)  # fmt: skip


def make_storage(url: str, heartbeat_s: int | None = HEARTBEAT_S) -> Any:
    """An ``RDBStorage`` for ``url`` (SQLite waits up to a minute for another worker's write instead of failing
    at once); with heartbeats and retries of stale trials unless ``heartbeat_s`` is None. Opened under
    :func:`worker_lock`, with :func:`retry_schema_race` for server databases: the first open of a new database
    creates its tables and stamps its schema version, and of two workers started together one fails (UNIQUE
    constraint failed: alembic_version.version_num, or table ... already exists)."""
    import optuna
    from optuna.storages import RDBStorage

    from wit_plugin.compat import optuna_rdb_storage

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}

    def open_storage() -> Any:
        if heartbeat_s is None:
            return RDBStorage(url, engine_kwargs=engine)
        with _quiet_experimental(optuna):
            return optuna_rdb_storage(url, engine, heartbeat_s, GRACE_FACTOR * heartbeat_s, MAX_RETRY)

    with worker_lock(url):
        return retry_schema_race(open_storage)


def retry_schema_race(open_storage: Callable[[], Any], attempts: int = 5) -> Any:
    """``open_storage()``, again (up to ``attempts`` times, a second in all) if the database refused it: a worker
    that lost the race to create a new database's tables or stamp its version ("table ... already exists", a
    duplicate version row) finds the winner's schema on the next open. Any other error is raised by the last try."""
    import sqlalchemy.exc

    for attempt in range(1, attempts):
        try:
            return open_storage()
        except sqlalchemy.exc.DatabaseError as error:
            reason = str(error.orig).splitlines()[0] if error.orig else type(error).__name__
            log.info("wit tune: opening the study's database failed (%s); trying again, another worker may be "
                     "creating it", reason)  # fmt: skip
            time.sleep(0.1 * attempt)
    return open_storage()


@contextmanager
def _sqlite_file_lock(database: Path) -> Iterator[None]:
    import fcntl

    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def worker_lock(url: str) -> Any:
    """A lock the workers of one SQLite study hold while they create the study or take a trial; nothing for server
    databases. Optuna takes a queued trial (``enqueue_trial``: the priors, retries) by reading it WAITING and setting
    it RUNNING under ``SELECT ... FOR UPDATE``, which PostgreSQL and MySQL honour and SQLite ignores: two workers on
    one SQLite file could both take the same queued trial, train it twice, and the second fails to report it."""
    prefix = "sqlite:///"
    return _sqlite_file_lock(Path(url[len(prefix) :])) if url.startswith(prefix) else nullcontext()


def serialise_ask(study: Any, url: str) -> None:
    """``study.optimize`` takes each trial through ``study.ask()``: take it under :func:`worker_lock`."""
    ask: Callable[..., Any] = study.ask

    def locked_ask(*args: Any, **kwargs: Any) -> Any:
        with worker_lock(url):
            return ask(*args, **kwargs)

    study.ask = locked_ask


class _quiet_experimental:
    """Optuna flags heartbeats and retries as experimental on every use: one warning nobody can act on."""

    def __init__(self, optuna: Any) -> None:
        import warnings

        self._warnings = warnings.catch_warnings()
        self._category = optuna.exceptions.ExperimentalWarning

    def __enter__(self) -> None:
        import warnings

        self._warnings.__enter__()
        warnings.simplefilter("ignore", self._category)

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)


def shown_url(url: str) -> str:
    """``url`` as logs, messages and files show it: its password masked (run folders and results get shared)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password else url  # else as typed (no re-quoting)


def check_storage(url: str | None) -> None:
    """Refuses, before anything trains, a ``--storage`` that is no database URL, one whose driver is not installed
    (Optuna would say "Failed to import DB access module" once the study opens), an in-memory SQLite database (the
    trials' training processes report to the study through its URL: each would see a database of its own), or a
    SQLite file in a folder that does not exist (SQLite makes the file, not its folder)."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = shown_url(url)
    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except ArgumentError:
        raise ValueError(f"--storage {shown!r} is not a database URL SQLAlchemy knows (e.g. sqlite:///study.db, "
                         "postgresql+psycopg://user@host/db)") from None  # fmt: skip
    except ImportError as error:
        raise ValueError(f"--storage {shown!r}: the database driver is not installed ({error}); for PostgreSQL, "
                         "pip install 'psycopg[binary]' and write postgresql+psycopg://...") from None  # fmt: skip
    if parsed.get_backend_name() != "sqlite":
        return
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"--storage {shown!r}: an in-memory database is not shared with the trials' processes; "
                         "name a file, e.g. sqlite:///study.db")  # fmt: skip
    folder = Path(parsed.database).parent
    if not folder.is_dir():
        raise ValueError(f"--storage {shown!r}: the folder {folder} does not exist")


def check_pruner(spec: str) -> str:
    name, _, value = spec.partition(":")
    if name == "threshold":
        try:
            float(value)
        except ValueError:
            raise ValueError(f"--pruner {spec!r}: threshold needs a number, e.g. threshold:2.5") from None
    elif name == "median" and value:
        if not value.isdigit():
            raise ValueError(f"--pruner {spec!r}: median:K needs a whole number of trials before pruning starts")
    elif name not in PRUNERS or value:
        raise ValueError(f"--pruner {spec!r}: choose from {', '.join(PRUNERS)}, median:K or threshold:X")
    return spec


def make_pruner(spec: str) -> Any:
    """median (Optuna's MedianPruner, once :data:`STARTUP_TRIALS` trials, or K for median:K, have ended),
    hyperband, none, or threshold:X (prune a trial once its intermediate value exceeds X)."""
    import optuna

    name, _, value = check_pruner(spec).partition(":")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(value or STARTUP_TRIALS), n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(upper=float(value))
    return optuna.pruners.NopPruner()


def make_sampler(seed: int | None, objectives: int) -> Any:
    """TPE (single and multi-objective), its first :data:`STARTUP_TRIALS` trials random, seeded."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS, multivariate=objectives == 1)


def open_study(
    name: str, storage: Any, directions: Sequence[str], meta: dict[str, Any], sampler: Any, pruner: Any
) -> tuple[Any, bool]:
    """The study ``name`` in ``storage``, created if new (returns it and whether it is new). A study tuning
    something else (other objectives, space, config, held-out data or scoring) is an error naming the difference,
    not a silent mix of objectives scored differently."""
    import optuna

    study = optuna.create_study(
        study_name=name, storage=storage, directions=list(directions), sampler=sampler, pruner=pruner,
        load_if_exists=True,
    )  # fmt: skip
    old = study.user_attrs.get(META)
    if old is None:
        study.set_user_attr(META, meta)
        return study, not study.get_trials(deepcopy=False)
    different = _differences(old, meta)
    if different:
        details = "; ".join(f"{key}: the study has {was!r}, this command {now!r}" for key, was, now in different)
        where = shown_url(storage.url) if hasattr(storage, "url") else storage
        raise ValueError(f"study {name!r} in {where} tunes something else ({details}): use another --study or "
                         "--out")  # fmt: skip
    return study, False


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The settings (dotted keys into nested ones) where ``new`` differs from ``old``, keys that ``old`` lacks
    (a study made by an older version) left out; a data file as a whole (its name and bytes)."""
    found = []
    for key, value in new.items():
        if key not in old or _by_content(old[key]) == _by_content(value):
            continue
        nested = isinstance(value, dict) and isinstance(old[key], dict) and "sha256" not in value
        found += _differences(old[key], value, f"{prefix}{key}.") if nested else [(prefix + key, old[key], value)]
    return found


def _by_content(value: Any) -> Any:
    """A study's setting as compared: a data file by its bytes (``sha256``), not its name (another worker's
    copy may be named otherwise)."""
    if isinstance(value, dict):
        return {key: _by_content(part) for key, part in value.items() if not ("sha256" in value and key == "file")}
    return value


def counts(trial: Any) -> bool:
    """Whether ``trial`` takes one of the study's N places: ended (complete, pruned, failed with an error of its
    own) or running. A trial failed without one (its worker died, Ctrl-C) is retried instead."""
    from optuna.trial import TrialState

    if trial.user_attrs.get(SURPLUS):
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and ERROR in trial.user_attrs


def slots_left(study: Any, total: int) -> tuple[int, int]:
    """(places left for new trials, trials running now), after failing stale trials."""
    import optuna
    from optuna.trial import TrialState

    with _quiet_experimental(optuna):
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    taken = sum(counts(trial) for trial in trials)
    running = sum(trial.state == TrialState.RUNNING for trial in trials)
    return total - taken, running


def frozen(study: Any, number: int) -> Any:
    """Trial ``number`` as the storage holds it (its system attributes: Optuna's retry marks)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def retry_of(trial: Any) -> int | None:
    """The trial number a retry repeats: Optuna's for a stale trial, ours for one interrupted by Ctrl-C."""
    return trial.system_attrs.get("failed_trial", trial.user_attrs.get(RETRY_OF))


def repeats(trial: Any) -> int | None:
    """The trial number ``trial`` runs again directly (a retry of a retry: the last one, where :func:`retry_of`
    names the first)."""
    history = trial.system_attrs.get("retry_history")
    return history[-1] if history else trial.user_attrs.get(RETRY_OF)


def is_surplus(study: Any, number: int, total: int) -> bool:
    """Whether trial ``number`` (just started) is past the total: N counted trials have lower numbers."""
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < number and counts(t)]
    return len(earlier) >= total
