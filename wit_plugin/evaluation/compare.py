"""Trained runs side by side: what each trained with, its last training losses, and what it does on held-out
data (per-role CE, POSIX, cross-task accuracy), for ``wit compare``.

A run is an Axolotl or TRL output folder with ``wit_run.json`` (full weights or a PEFT adapter); a sweep's
parent folder stands for its runs. A plain model folder (no ``wit_run.json``) is a reference row; several may
be given. One bad run is reported with its error and does not stop the others.

A model's numbers depend only on that model, the eval data and the flags, never on the other rows of the table:

* Truncation: a held-out row is cut at ``--max-length`` when given, else only where it exceeds the model's own
  context window (``max_position_embeddings``); never at a run's training ``sequence_len`` (a reference model
  would have to borrow one from a neighbour). Each row reports ``rows_truncated`` and ``cut_at``.
* Tagging: a run's rows are tagged as the run tagged its training data; a reference model's with its own
  tokenizer and the detected row format, never a neighbour's set-up.
* No "WIT loss" column: the WIT loss of a run averages Σ w·CE over the tokens *its own* weights count, so two
  runs' values are averages over different tokens with different weights, and a lower one does not mean a
  better model (λp=0 averages only response tokens). The per-role CE columns are the comparable numbers.
* Cross-task accuracy is in percent (``crosstask_pct``): per condition averaged over tasks, and per
  ``task/condition``, as the table and the plot show them.

With a :class:`~wit_plugin.evaluation.resume.Saved` file, each row is written as it completes, and rows already
there (same flags and eval files, same model files) are reused instead of evaluated again.

Progress is counted in evaluated items over the whole table (:class:`Tally`): held-out rows, POSIX sets and
cross-task requests of every model still to evaluate, so that the time left covers the models to come.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from wit_plugin import options as wit_options
from wit_plugin.evaluation.models import MODEL_FILES, TOKENIZER_FILES, has_model, has_tokenizer
from wit_plugin.evaluation.resume import Saved, fingerprint, model_identity
from wit_plugin.jsonl import read_jsonl
from wit_plugin.roles import MESSAGES_FIELD, TEXT_FIELD
from wit_plugin.training.records import RUN_FILE, RunError, dataset_taggings, find_runs, pruned_step, read_record

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
Count = Callable[[int, int], None]  # (done, total)
RESULTS_VERSION = 2  # bumped when a row's numbers change meaning: older --out files are recomputed, not reused


@dataclass
class CompareSettings:
    eval_data: Path
    references: Sequence[str] = ()  # plain models (folders or names), evaluated as reference rows
    posix: Path | None = None
    pool: Path | None = None
    targets: Path | None = None
    crosstask: dict[str, Any] = field(default_factory=dict)  # wit_crosstask_* values
    posix_options: dict[str, Any] = field(default_factory=dict)  # wit_posix_* values (wit_posix_psi: which ψ)
    max_length: int | None = None  # default: each model's own context window
    device: str | None = None
    dtype: str = "float32"  # every model in the table is evaluated in this precision


def _check_run_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise RunError(f"{folder} is not a folder")
    if not has_model(folder):
        raise RunError(f"{folder} holds no saved model ({' or '.join(MODEL_FILES)}): did the run finish saving?")
    if not has_tokenizer(folder):
        raise RunError(f"{folder} holds no tokenizer ({', '.join(TOKENIZER_FILES)}): save it with the model")


def load_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = list(read_jsonl(path))
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


CHAT_RENDERING = ("chat_template", "template_kwargs", "eot_tokens", "role_map", "field_tools")


def _fits(tagging: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether ``row`` has the shape of the run's training rows (its recorded format and field names)."""
    from wit_plugin.tagging.registry import get_format

    row_format, options = tagging.get("format"), tagging.get("options") or {}
    if not row_format:
        return False
    if row_format == "chat":
        return (options.get("field_messages") or MESSAGES_FIELD) in row
    if row_format == "text":
        return (options.get("field") or TEXT_FIELD) in row
    return get_format(row_format).matches(row)


def _tag_rows(
    tokenizer: Any, taggings: Sequence[dict[str, Any]], rows: list[tuple[int, dict[str, Any]]], path: Path
) -> list:
    """A row goes through the tagger of the first training dataset whose shape it has (row format and field
    names: that dataset's own chat template and options); a row of no training shape gets its detected format
    with the first dataset's chat rendering (template, its arguments, end of turn, role names), so one held-out
    file may mix shapes."""
    from wit_plugin.tagging import RoleTagger, TaggingError
    from wit_plugin.tagging.registry import detect_format

    taggings = list(taggings) or [{}]
    rendering = {key: value for key, value in (taggings[0].get("options") or {}).items() if key in CHAT_RENDERING}
    taggers: dict[tuple[str, int | None], RoleTagger] = {}
    tagged = []
    for line, row in rows:
        try:
            own = next((i for i, tagging in enumerate(taggings) if _fits(tagging, row)), None)
            key = (taggings[own]["format"], own) if own is not None else (detect_format(row).name, None)
            if key not in taggers:
                options = dict(taggings[own].get("options") or {}) if own is not None else rendering
                taggers[key] = RoleTagger(tokenizer, key[0], **options)
            tagged.append(taggers[key].tag(row))
        except TaggingError as error:
            raise TaggingError(f"{path}:{line}: {error}") from None
    return tagged


def context_length(model: Any) -> int | None:
    """The model's context window, as its config states it (None when it states none)."""
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def cut_length(model: Any, max_length: int | None) -> int | None:
    """Where held-out rows are cut for ``model``: ``max_length`` (``--max-length``) when given, never beyond the
    model's context window; the same for every model of a table and for a model evaluated alone."""
    limits = [value for value in (max_length, context_length(model)) if value]
    return min(limits) if limits else None


HELDOUT, POSIX, CROSSTASK = "held-out CE", "POSIX", "cross-task"
STAGES = (HELDOUT, POSIX, CROSSTASK)


def stage_sizes(settings: CompareSettings, rows: Sequence[Any]) -> dict[str, int]:
    """Items one model evaluates per stage: held-out rows, POSIX sets, and (an estimate until the first model's
    cross-task stage reports its exact count) a cross-task request per target and condition, one per source task
    for ``cross``."""
    sizes = {HELDOUT: len(rows)}
    if settings.posix:
        from wit_plugin.evaluation.posix.variants import load_prompt_sets

        sizes[POSIX] = len(load_prompt_sets(settings.posix))
    if settings.pool and settings.targets:
        from wit_plugin.evaluation.crosstask import CrossTaskSettings, load_items

        options = CrossTaskSettings.from_options(settings.crosstask)
        pool_tasks = {item.task for item in load_items(settings.pool)}
        per_task = Counter(item.task for item in load_items(settings.targets))
        sizes[CROSSTASK] = sum(
            min(n, options.limit or n) * (len(pool_tasks - {task}) if condition == "cross" else 1)
            for task, n in per_task.items()
            for condition in options.conditions
        )
    return sizes


class Tally:
    """Done/total over a whole comparison, in evaluated items: what every model still to evaluate has left, so
    that the time left (average time per item so far) covers the models to come, not only the stage under way.
    A stage that reports an exact total replaces its estimate for every model; a model that fails counts as
    done."""

    def __init__(self, report: Count, sizes: dict[str, int], models: int) -> None:
        self.report, self.sizes, self.left = report, dict(sizes), models
        self.finished = 0  # items of the models already finished
        self.current: dict[str, int] = {}  # stage -> items done, for the model under way
        self.last: tuple[int, int] | None = None

    def stage(self, name: str, done: int, total: int) -> None:
        self.sizes[name] = total
        self.current[name] = done
        self._report()

    def model_done(self) -> None:
        self.finished += sum(self.sizes.values())
        self.current, self.left = {}, self.left - 1
        self._report()

    def _report(self) -> None:
        total = self.finished + self.left * sum(self.sizes.values())
        now = (min(self.finished + sum(self.current.values()), total), total)
        if now != self.last:  # a model's end after its last stage's last item says nothing new
            self.last = now
            self.report(*now)


def evaluate_model(
    name: str,
    model: Any,
    tokenizer: Any,
    taggings: Sequence[dict[str, Any]],
    settings: CompareSettings,
    rows: list[tuple[int, dict[str, Any]]],
    progress: Progress | None = None,
    weights_key: str | None = None,
    count: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Held-out per-role CE, POSIX and cross-task accuracy (%) of one loaded model. ``count(stage, done,
    total)`` gets each stage's finished items (``stage`` one of :data:`STAGES`)."""
    from wit_plugin.evaluation.heldout import heldout_losses

    def say(text: str) -> Callable[[int, int], None] | None:
        if progress is not None:
            progress(f"{name}: {text}")
        return partial(count, text) if count is not None else None

    counted = say(HELDOUT)
    cut_at = cut_length(model, settings.max_length)
    held = heldout_losses(model, _tag_rows(tokenizer, taggings, rows, settings.eval_data), cut_at, progress=counted)
    result: dict[str, Any] = {"eval": {**held.metrics(), "cut_at": cut_at}}
    if settings.posix:
        from wit_plugin.evaluation.posix import POSIXSettings, evaluate_posix
        from wit_plugin.evaluation.posix.variants import load_prompt_sets

        counted = say(POSIX)
        sets = load_prompt_sets(settings.posix)
        posix = POSIXSettings.from_options(settings.posix_options)
        result["posix"] = evaluate_posix(model, sets, tokenizer, progress=counted, **posix.arguments()).posix
    if settings.pool and settings.targets:
        from wit_plugin.evaluation.crosstask import CrossTaskSettings, evaluate_crosstask, load_items

        counted = say(CROSSTASK)
        outcome = evaluate_crosstask(
            model,
            tokenizer,
            load_items(settings.pool),
            load_items(settings.targets),
            CrossTaskSettings.from_options(settings.crosstask),
            progress=counted,
            embedding_cache_key=weights_key,
            activations=False,
        )
        result["crosstask_pct"] = {k.removeprefix("crosstask/"): 100 * v for k, v in outcome.metrics().items()}
    return result


def _guarded(entry: dict[str, Any], evaluate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``entry`` updated with what ``evaluate`` returns, or with its ``error``: one bad run is reported and the
    others are still compared. The model ``evaluate`` loads is freed before the next one loads."""
    try:
        entry.update(evaluate())
    except Exception as error:  # noqa: BLE001 - reported beside the other runs' results
        entry["error"] = f"{type(error).__name__}: {error}"
    finally:
        gc.collect()
    return entry


def _rows(paths: Sequence[str | Path], references: Sequence[str]) -> list[tuple[str, str]]:
    """``(kind, name)`` per table row in command order: ``--base`` references first, then each path: a run
    (``wit_run.json``), a plain model folder (a reference), or a sweep's parent standing for the runs below."""
    rows = [("reference", str(name)) for name in references]
    for path in map(Path, paths):
        if has_model(path) and not (path / RUN_FILE).is_file():
            rows.append(("reference", str(path)))
        else:
            rows += [("run", str(folder)) for folder in find_runs([path])]
    return list(dict.fromkeys(rows))


def compare_runs(
    paths: Sequence[str | Path],
    settings: CompareSettings,
    progress: Progress | None = None,
    saved: Saved | None = None,
    count: Count | None = None,
) -> dict[str, Any]:
    """``{"eval_data", "runs": [...]}``: one entry per row (see :func:`_rows`); a row that fails has ``error``
    instead of results, and one that evaluated with a caveat (training unfinished) a ``note``. With ``saved``,
    the document is written after every row, and rows it already holds for the same model files are reused.
    ``progress`` gets the step under way (``RUN: POSIX``), ``count(done, total)`` the items evaluated over the
    rows still to evaluate (see :class:`Tally`)."""
    from wit_plugin.evaluation.crosstask.select import model_cache_key
    from wit_plugin.evaluation.models import load_model

    rows = load_rows(settings.eval_data)
    previous = {entry["run"]: entry for entry in (saved.previous or {}).get("runs", [])} if saved else {}
    done = set(saved.done) if saved else set()
    where = saved.path if saved else None

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    def evaluate_run(folder: Path, entry: dict[str, Any]) -> dict[str, Any]:
        record = read_record(folder)
        entry.update(
            weights=record["weights"],
            preset=(record.get("options") or {}).get("wit_preset"),
            normalize=(record.get("options") or {}).get("wit_normalize"),
            framework=record["framework"],
            train={k: v for k, v in (record.get("train") or {}).items() if k in ("loss", "step") or "wit/" in k},
            finished=record.get("finished", False),
        )
        _check_run_folder(folder)
        pruned = pruned_step(folder)
        if pruned:
            entry["note"] = f"pruned by wit tune at step {pruned['step']}: trained fewer steps than its config asks"
        elif not entry["finished"]:
            entry["note"] = f"training did not finish: the model saved at step {entry['train'].get('step', '?')}"
        say(f"{folder}: loading")
        model, tokenizer = load_model(folder, settings.device, base=record.get("base_model"), dtype=settings.dtype)
        return evaluate_model(
            str(folder), model, tokenizer, dataset_taggings(record), settings, rows, progress,
            weights_key=model_cache_key(folder), count=tally.stage if tally else None,
        )  # fmt: skip

    def evaluate_reference(name: str) -> dict[str, Any]:
        say(f"{name}: loading the reference model")
        model, tokenizer = load_model(name, settings.device, dtype=settings.dtype)
        return evaluate_model(
            name, model, tokenizer, [], settings, rows, progress,
            weights_key=model_cache_key(name), count=tally.stage if tally else None,
        )  # fmt: skip

    entries: list[dict[str, Any]] = []

    def document() -> dict[str, Any]:
        results: dict[str, Any] = {"eval_data": str(settings.eval_data), "runs": entries}
        if settings.posix:
            results["posix_psi"] = wit_options.resolved(settings.posix_options, "wit_posix_psi")
        return results

    plan = []  # (kind, name, model fingerprint, the saved row to reuse or None)
    for kind, name in _rows(paths, settings.references):
        model = fingerprint(model_identity(name))
        old = previous.get(name)
        reuse = old is not None and name in done and old.get("model_fingerprint") == model and "error" not in old
        plan.append((kind, name, model, old if reuse else None))
    to_evaluate = sum(old is None for *_, old in plan)
    tally = Tally(count, stage_sizes(settings, rows), to_evaluate) if count is not None and to_evaluate else None
    for kind, name, model, old in plan:
        if old is not None:
            log.info("%s: reusing its row saved in %s (same flags, files and model; --force recomputes)", name, where)
            entries.append(old)
            continue
        entry: dict[str, Any] = {"run": name, "kind": kind, "model_fingerprint": model}
        if kind == "reference":
            entry.update(weights=None, train={})
            _guarded(entry, partial(evaluate_reference, name))
        else:
            _guarded(entry, partial(evaluate_run, Path(name), entry))
        if tally is not None:
            tally.model_done()
        entries.append(entry)
        if saved is not None:
            saved.write(document(), [e["run"] for e in entries if "error" not in e], complete=False)
    if saved is not None:
        saved.write(document(), [e["run"] for e in entries if "error" not in e], complete=True)
    return document()
