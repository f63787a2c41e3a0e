"""Intermediate scores during a trial's training, and stopping it when the study's pruner says so.

:class:`PruningCallback` is a ``TrainerCallback`` run inside the training process (a TRL trainer in the tuning
process, or the Axolotl subprocess through :mod:`.axolotl_plugin`). Every ``report_every`` optimiser steps it
scores the model in training on the held-out data with the objective's own code (:func:`.objective.score_model`,
tagged as the run tagged its training data, read from the run's ``wit_run.json``), reports the value to the
trial (``trial.report``: the study's storage, through its URL in another process), and stops training when
``trial.should_prune()``; the run folder then holds :data:`PRUNED_FILE`, which the tuning process reads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wit_plugin.training.records import PRUNED_FILE

log = logging.getLogger(__name__)

TRIAL_FILE = "wit_tune_trial.json"  # what the Axolotl subprocess's callback needs (TrialLink)
TRIAL_ENV = "WIT_TUNE_TRIAL"  # the path of TRIAL_FILE, in the subprocess's environment
STORAGE_ENV = "WIT_TUNE_STORAGE"  # the storage URL, password included, which TRIAL_FILE masks
REPORTS_PER_TRIAL = 4  # default: report at a quarter, half and three quarters of the steps


@dataclass
class TrialLink:
    """What a training process needs to report to its trial: the study's storage and the trial, the pruner
    (rebuilt there: ``should_prune`` runs where the values are), the objective and how to score it."""

    storage: str
    study: str
    trial_id: int
    pruner: str
    objective: str
    settings: dict[str, Any]  # CompareSettings' fields, JSON-able
    report_every: int | None = None  # None: REPORTS_PER_TRIAL reports per run; 0: none (no pruning)

    def save(self, folder: Path) -> Path:
        """Written with the storage's password masked: the subprocess gets the URL from :data:`STORAGE_ENV`."""
        from wit_plugin.tuning.study import shown_url

        path = folder / TRIAL_FILE
        path.write_text(json.dumps({**asdict(self), "storage": shown_url(self.storage)}, indent=1) + "\n", "utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrialLink:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{**saved, "storage": os.environ.get(STORAGE_ENV) or saved["storage"]})

    def compare_settings(self) -> Any:
        from wit_plugin.evaluation.compare import CompareSettings

        values = dict(self.settings)
        for key in ("eval_data", "posix", "pool", "targets"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return CompareSettings(**values)

    def open_trial(self) -> Any:
        """The trial, through the storage (used in another process than the study's)."""
        import optuna

        from wit_plugin.tuning.study import make_pruner, make_storage

        storage = make_storage(self.storage, heartbeat_s=None)
        study = optuna.load_study(study_name=self.study, storage=storage, pruner=make_pruner(self.pruner))
        return optuna.trial.Trial(study, self.trial_id)


def settings_dict(settings: Any) -> dict[str, Any]:
    """CompareSettings as JSON (paths as text)."""
    values = asdict(settings)
    values["references"] = list(values.get("references") or [])
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


def rank_zero_decides(stop: bool, device: Any) -> bool:
    """Rank 0's decision, on every rank of a distributed run: a rank that went on training alone would wait forever
    in its next gradient all-reduce. ``device``: where the backend's tensors live (CUDA for NCCL)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stop
    flag = torch.tensor([int(stop)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


class PruningCallback(TrainerCallback):
    """Reports the objective every ``report_every`` steps (default: :data:`REPORTS_PER_TRIAL` times per run, never
    at the last step, whose score is the trial's objective) and stops a trial the pruner prunes, on every rank.

    Every rank scores (a sharded model's forward needs them all); rank 0 reports and decides. ``score(model,
    tokenizer, run folder)`` replaces the objective's own code on the held-out rows (for tests)."""

    def __init__(
        self, link: TrialLink, trial: Any | None = None, score: Callable[[Any, Any, Path], float] | None = None
    ) -> None:
        self.link = link
        self._trial = trial
        self._score = score
        self.every = link.report_every
        self._rows: Any = None
        self._settings: Any = None
        self._taggings: Any = None

    @property
    def trial(self) -> Any:
        if self._trial is None:
            self._trial = self.link.open_trial()
        return self._trial

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.every is None:
            self.every = max(1, state.max_steps // REPORTS_PER_TRIAL)
        log.info("wit tune: held-out %s reported every %d step(s) for pruning", self.link.objective, self.every)

    def _prepare(self, folder: Path) -> None:
        from wit_plugin.evaluation.compare import load_rows
        from wit_plugin.training.records import dataset_taggings, read_record

        self._settings = self.link.compare_settings()
        self._rows = load_rows(self._settings.eval_data)
        self._taggings = dataset_taggings(read_record(folder))  # written at train begin by RunRecordCallback

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        step = state.global_step
        if not self.every or step % self.every or step >= state.max_steps:
            return
        folder = Path(args.output_dir)
        tokenizer = kw.get("processing_class") or kw.get("tokenizer")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        value = (self._score or self._objective)(kw["model"], tokenizer, folder)
        stop = False
        if state.is_world_process_zero:
            self.trial.report(value, step)
            stop = self.trial.should_prune()
            if stop:
                (folder / PRUNED_FILE).write_text(json.dumps({"step": step, "value": value}) + "\n", encoding="utf-8")
            verdict = "pruned, training stops" if stop else "reported"
            log.info("wit tune: step %d, %s %.4f %s", step, self.link.objective, value, verdict)
        if rank_zero_decides(stop, args.device):
            control.should_training_stop = True

    def _objective(self, model: Any, tokenizer: Any, folder: Path) -> float:
        from wit_plugin.tuning.objective import OBJECTIVES, score_model

        if self._rows is None:
            self._prepare(folder)
        return score_model(
            model, tokenizer, self._taggings, OBJECTIVES[self.link.objective], self._settings, self._rows
        )
