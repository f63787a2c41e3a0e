"""Trained runs side by side: what each trained with, its last training losses, and what it does on held-out
data (per-role CE, POSIX, cross-task accuracy), for ``wit compare``.

A run is an Axolotl or TRL output folder with ``wit_run.json`` (full weights or a PEFT adapter); a sweep's
parent folder stands for its runs. One bad run is reported with its error and does not stop the others.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from wit_plugin.evaluation.models import TOKENIZER_FILES, has_tokenizer
from wit_plugin.jsonl import read_jsonl
from wit_plugin.roles import RoleWeights
from wit_plugin.runs import RunError, find_runs, read_record

Progress = Callable[[str], None]
MODEL_FILES = ("config.json", "adapter_config.json")


@dataclass
class CompareSettings:
    eval_data: Path
    base: str | None = None
    posix: Path | None = None
    pool: Path | None = None
    targets: Path | None = None
    crosstask: dict[str, Any] = field(default_factory=dict)  # wit_crosstask_* values
    max_length: int | None = None  # default: each run's own sequence length
    posix_max_new_tokens: int = 32
    posix_psi: str = "paper"  # wit_posix_psi: the paper's Eq. 1 or the package's definition
    device: str | None = None


def _check_run_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise RunError(f"{folder} is not a folder")
    if not any((folder / name).is_file() for name in MODEL_FILES):
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
    if row_format == "chat":
        return (options.get("field_messages") or "messages") in row
    if row_format == "text":
        return (options.get("field") or "text") in row
    return bool(row_format) and get_format(row_format).matches(row)


def _tag_rows(tokenizer: Any, tagging: dict[str, Any], rows: list[tuple[int, dict[str, Any]]], path: Path) -> list:
    """Rows of the run's training shape go through the run's own tagger (format and options); a row of another
    shape gets its detected format with only the run's chat rendering (template, its arguments, end of turn,
    role names), so one held-out file may mix shapes."""
    from wit_plugin.tagging import RoleTagger, TaggingError
    from wit_plugin.tagging.registry import detect_format

    options = dict(tagging.get("options") or {})
    rendering = {key: value for key, value in options.items() if key in CHAT_RENDERING}
    taggers: dict[tuple[str, bool], RoleTagger] = {}
    tagged = []
    for line, row in rows:
        try:
            own = bool(tagging.get("format")) and _fits(tagging, row)
            key = (tagging["format"], True) if own else (detect_format(row).name, False)
            if key not in taggers:
                taggers[key] = RoleTagger(tokenizer, key[0], **(options if own else rendering))
            tagged.append(taggers[key].tag(row))
        except TaggingError as error:
            raise TaggingError(f"{path}:{line}: {error}") from None
    return tagged


def evaluate_model(
    name: str,
    model: Any,
    tokenizer: Any,
    weights: RoleWeights | None,
    tagging: dict[str, Any],
    max_length: int | None,
    settings: CompareSettings,
    rows: list[tuple[int, dict[str, Any]]],
    progress: Progress | None = None,
    weights_key: str | None = None,
) -> dict[str, Any]:
    """Held-out per-role CE, POSIX and cross-task accuracy of one loaded model."""
    from wit_plugin.evaluation.heldout import heldout_losses

    def say(text: str) -> None:
        if progress is not None:
            progress(f"{name}: {text}")

    say("held-out CE")
    held = heldout_losses(model, _tag_rows(tokenizer, tagging, rows, settings.eval_data), max_length)
    result: dict[str, Any] = {"eval": held.metrics(weights)}
    if settings.posix:
        from wit_plugin.evaluation.posix import evaluate_posix
        from wit_plugin.evaluation.posix.variants import load_prompt_sets

        say("POSIX")
        sets = load_prompt_sets(settings.posix)
        result["posix"] = evaluate_posix(
            model, sets, tokenizer, max_new_tokens=settings.posix_max_new_tokens, psi_definition=settings.posix_psi
        ).posix
    if settings.pool and settings.targets:
        from wit_plugin.evaluation.crosstask import CrossTaskSettings, evaluate_crosstask, load_items

        say("cross-task")
        outcome = evaluate_crosstask(
            model,
            tokenizer,
            load_items(settings.pool),
            load_items(settings.targets),
            CrossTaskSettings.from_options(settings.crosstask),
            embedding_cache_key=weights_key,
            activations=False,
        )
        result["crosstask"] = {k.removeprefix("crosstask/"): v for k, v in outcome.metrics().items()}
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


def compare_runs(
    paths: Sequence[str | Path], settings: CompareSettings, progress: Progress | None = None
) -> dict[str, Any]:
    """``{"runs": [...]}``: one entry per run (and the base model first, when given); a run that fails has
    ``error`` instead of results."""
    from wit_plugin.evaluation.crosstask.select import model_cache_key
    from wit_plugin.evaluation.models import load_model

    rows = load_rows(settings.eval_data)
    reference: dict[str, Any] = {}  # the first run's tagging and length, for the base model

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    def evaluate_run(folder: Path, entry: dict[str, Any]) -> dict[str, Any]:
        record = read_record(folder)
        _check_run_folder(folder)
        weights = RoleWeights(**record["weights"])
        entry.update(
            weights=record["weights"],
            preset=(record.get("options") or {}).get("wit_preset"),
            framework=record["framework"],
            train={k: v for k, v in (record.get("train") or {}).items() if k in ("loss", "step") or "wit/" in k},
            finished=record.get("finished", False),
        )
        reference["tagging"] = reference.get("tagging") or record["tagging"]
        say(f"{folder}: loading")
        model, tokenizer = load_model(folder, settings.device, base=record.get("base_model"))
        max_length = settings.max_length or record.get("sequence_len") or record["tagging"].get("max_length")
        reference["max_length"] = reference.get("max_length") or max_length
        return evaluate_model(
            str(folder), model, tokenizer, weights, record["tagging"], max_length, settings, rows, progress,
            weights_key=model_cache_key(folder),
        )  # fmt: skip

    def evaluate_base(entry: dict[str, Any]) -> dict[str, Any]:
        say(f"{settings.base}: loading the base model")
        model, tokenizer = load_model(settings.base, settings.device)
        max_length = settings.max_length or reference.get("max_length")
        return evaluate_model(
            entry["run"], model, tokenizer, None, reference.get("tagging", {}), max_length, settings, rows, progress,
            weights_key=model_cache_key(settings.base),
        )  # fmt: skip

    entries = []
    for folder in find_runs(paths):
        entry: dict[str, Any] = {"run": str(folder)}
        entries.append(_guarded(entry, partial(evaluate_run, folder, entry)))
    if settings.base:
        base: dict[str, Any] = {"run": f"base: {settings.base}", "weights": None, "train": {}}
        entries.insert(0, _guarded(base, partial(evaluate_base, base)))
    results: dict[str, Any] = {"eval_data": str(settings.eval_data), "runs": entries}
    if settings.posix:
        results["posix_psi"] = settings.posix_psi
    return results


def write_results(results: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
