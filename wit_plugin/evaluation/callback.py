"""Any evaluator during training: a ``TrainerCallback`` that runs it every N optimiser steps and logs its metrics.

An evaluator has ``evaluate(model, tokenizer) -> {metric: value}``. The values join the next log line:
wit_plugin's trainers merge them before logging (so they are printed, reported and kept in
``state.log_history``); under any other trainer the callback's ``on_log`` adds them to that line's history
entry. Both adapters build the callbacks from the same ``wit_posix_*`` / ``wit_crosstask_*`` options
(:func:`evaluation_callbacks`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wit_plugin import options

if TYPE_CHECKING:
    from wit_plugin.evaluation.posix.evaluate import POSIXSettings

LOG = logging.getLogger(__name__)


class Evaluator(Protocol):
    name: str

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, float]: ...


class EvaluationCallback(TrainerCallback):
    """Runs ``evaluator`` with the trainer's own model and tokenizer when ``global_step % every_n_steps == 0``.

    Evaluators run in eval mode without gradients and restore the model's train/eval state. All ranks evaluate
    (sharded models need every rank in the forward pass); the main process logs.
    """

    def __init__(self, evaluator: Evaluator, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"{evaluator.name}: every_n_steps must be at least 1, got {every_n_steps}")
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self._pending: dict[str, float] = {}

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step % self.every_n_steps:
            return
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor wraps its tokenizer
        if tokenizer is None:
            raise ValueError(f"the {self.evaluator.name} callback needs the trainer's tokenizer (processing_class)")
        metrics = self.evaluator.evaluate(kwargs["model"], tokenizer)
        self._pending.update(metrics)
        LOG.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def pop_pending_logs(self) -> dict[str, float]:
        """The values not logged yet. wit_plugin's trainers merge them into their next log line (printed,
        reported, kept in the history); with another trainer :meth:`on_log` attaches them to that line."""
        pending, self._pending = self._pending, {}
        return pending

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kwargs: Any,
    ) -> None:
        pending = self.pop_pending_logs()
        if pending and logs is not None:
            logs.update(pending)
            if state.log_history:  # Trainer.log appended a copy of ``logs`` before calling the callbacks
                state.log_history[-1].update(pending)


class POSIXCallback(EvaluationCallback):
    """POSIX on held-out prompt sets (a JSONL path, or the sets) every N steps, logged as ``posix``."""

    def __init__(
        self,
        prompt_sets: str | Path | Sequence[Sequence[Any]],
        every_n_steps: int,
        settings: POSIXSettings | None = None,
    ) -> None:
        from wit_plugin.evaluation.posix.evaluate import POSIXEvaluator

        super().__init__(POSIXEvaluator(prompt_sets, settings), every_n_steps)

    @property
    def prompt_sets(self) -> list[Any]:
        return self.evaluator.prompt_sets

    @property
    def settings(self) -> POSIXSettings:
        return self.evaluator.settings

    @property
    def last_result(self) -> Any:
        return self.evaluator.last_result


class CrossTaskCallback(EvaluationCallback):
    """Cross-task accuracy on a pool and targets every N steps, logged as ``crosstask/<task>/<condition>`` and
    ``crosstask/<condition>`` (mean over tasks)."""

    def __init__(
        self, pool: str | Path, targets: str | Path, every_n_steps: int, values: Mapping[str, Any] | None = None
    ) -> None:
        from wit_plugin.evaluation.crosstask.evaluate import CrossTaskEvaluator

        super().__init__(CrossTaskEvaluator(pool, targets, values), every_n_steps)

    @property
    def last_result(self) -> Any:
        return self.evaluator.last_result


def evaluation_callbacks(values: Mapping[str, Any]) -> list[EvaluationCallback]:
    """The callbacks the ``wit_posix_*`` and ``wit_crosstask_*`` options ask for (none when their data is unset)."""
    options.check_posix(values)
    options.check_crosstask(values)
    callbacks: list[EvaluationCallback] = []
    if values.get("wit_posix_prompts"):
        from wit_plugin.evaluation.posix.evaluate import POSIXSettings

        callbacks.append(
            POSIXCallback(
                values["wit_posix_prompts"],
                every_n_steps=options.resolved(values, "wit_posix_steps"),
                settings=POSIXSettings.from_options(values),
            )
        )
    if values.get("wit_crosstask_pool"):
        callbacks.append(
            CrossTaskCallback(
                values["wit_crosstask_pool"],
                values["wit_crosstask_targets"],
                every_n_steps=options.resolved(values, "wit_crosstask_steps"),
                values=values,
            )
        )
    return callbacks
