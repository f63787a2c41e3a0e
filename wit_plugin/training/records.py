"""What a training run trained with, written into its output folder, so runs can be compared later.

At train start wit_plugin's trainers (Axolotl and TRL) write ``wit_run.json``: the resolved role weights (by role: a
number, or the schedule mapping ``{start, end, schedule, warmup}`` a scheduled weight follows), every
``wit_*`` option, the loss implementation, package versions, base model, datasets and the tagging set-up (row
format and chat options, so held-out rows can be tagged exactly as training tagged them): ``tagging`` for the
first dataset and ``dataset_taggings`` for each (records from before it have ``tagging`` only), and
``dropped_unrendered``: what ``wit_drop_unrendered`` dropped from each dataset that opted in, by kind
(:mod:`wit_plugin.tagging.dropped`; older records lack it). Each log line updates
the last training metrics (``train``), and the end of training marks the run ``finished``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wit_plugin.roles import RoleSchedules, RoleWeights

RUN_FILE = "wit_run.json"
PACKAGES = ("wit_plugin", "torch", "transformers", "trl", "axolotl", "peft", "datasets", "accelerate")


class RunError(ValueError):
    """A folder that is not a wit_plugin run, or a record that cannot be read; the message names the folder."""


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it (anything else as its text)."""
    return json.loads(json.dumps(value, default=str))


def run_record(
    framework: str,
    weights: RoleWeights | RoleSchedules,
    options: Mapping[str, Any],
    loss_impl: str,
    base_model: str | None,
    datasets: list[dict[str, Any]],
    taggings: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """The record of a run (built once, by :func:`wit_plugin.training.install.install_wit`, for every adapter);
    ``taggings``: how each training dataset is tagged, in order."""
    from wit_plugin.tagging import TAGGING_VERSION

    return jsonable(
        {
            "framework": framework,
            "weights": RoleSchedules.of(weights).as_json(),
            "options": {key: value for key, value in options.items() if key.startswith("wit_")},
            "loss_impl": loss_impl,
            "base_model": base_model,
            "datasets": datasets,
            "tagging": {"version": TAGGING_VERSION, **(taggings[0] if taggings else {})},
            "dataset_taggings": taggings,
            "versions": package_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": False,
            "train": {},
            **extra,
        }
    )


class RunRecordCallback(TrainerCallback):
    """Writes the record at train start, keeps the last training log line in it, marks it finished at the end.

    Only the main process writes."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def _write(self, args: TrainingArguments, state: TrainerState) -> None:
        if state.is_world_process_zero and args.output_dir:
            folder = Path(args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / RUN_FILE).write_text(json.dumps(self.record, indent=1) + "\n", encoding="utf-8")

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._write(args, state)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kw: Any,
    ) -> None:
        if logs and "loss" in logs:
            self.record["train"] = jsonable({"step": state.global_step, "epoch": state.epoch, **logs})

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._write(args, state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.record["finished"] = True
        self.record["steps"] = state.global_step
        self._write(args, state)


PRUNED_FILE = "wit_tune_pruned.json"  # written by wit tune's pruning callback when it stops a run


def pruned_step(folder: str | Path) -> dict[str, Any] | None:
    """Where wit tune's pruner stopped the run (``{"step", "value"}``), or None if it did not."""
    path = Path(folder) / PRUNED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_record(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise RunError(f"{folder} is not a wit_plugin run: it has no {RUN_FILE} (train with wit_plugin to get one)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not valid JSON ({error.msg})") from None
    missing = [key for key in ("weights", "tagging", "framework") if key not in record]
    if missing:
        raise RunError(f"{path} lacks {missing}")
    return record


def dataset_taggings(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each training dataset's tagging set-up, in the config's order (an older record: its one ``tagging``)."""
    return [tagging for tagging in record.get("dataset_taggings") or [record["tagging"]] if tagging]


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders: each path itself, or the runs below it (an Axolotl sweep's ``sweep0001``... folders, at any
    depth); a path with neither is returned as it is, so that comparing it reports why it is not a run."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / RUN_FILE).is_file():
            runs.append(path)
            continue
        below = sorted(record.parent for record in path.rglob(RUN_FILE)) if path.is_dir() else []
        runs += below or [path]
    return list(dict.fromkeys(runs))
