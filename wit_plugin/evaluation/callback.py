"""POSIX during training: a ``TrainerCallback`` that scores held-out prompt sets every N optimiser steps.

The value joins the next log line as ``posix``: wit_plugin's trainers merge it before logging (so it is
printed, reported and kept in ``state.log_history``); under any other trainer the callback's ``on_log``
adds it to that line's history entry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wit_plugin.evaluation.posix import POSIXResult, evaluate_posix
from wit_plugin.evaluation.prompts import Prompt, validate_prompt_sets
from wit_plugin.evaluation.variants import load_prompt_sets

LOG = logging.getLogger(__name__)


class POSIXCallback(TrainerCallback):
    """Computes POSIX with the trainer's own model and tokenizer when ``global_step % every_n_steps == 0``.

    Generation and scoring run in eval mode without gradients; the model's train/eval state is restored.
    All ranks evaluate (sharded models need every rank in the forward pass); the main process logs.
    """

    def __init__(
        self,
        prompt_sets: str | Path | Sequence[Sequence[Prompt]],
        every_n_steps: int,
        max_new_tokens: int = 32,
        batch_size: int = 32,
    ) -> None:
        if every_n_steps < 1 or max_new_tokens < 1:
            raise ValueError(
                f"POSIX every_n_steps and max_new_tokens must be at least 1, got {every_n_steps} and {max_new_tokens}"
            )
        if isinstance(prompt_sets, (str, Path)):
            self.prompt_sets = load_prompt_sets(prompt_sets)
        else:
            self.prompt_sets = validate_prompt_sets(prompt_sets)
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.last_result: POSIXResult | None = None
        self._pending: dict[str, float] = {}

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step % self.every_n_steps:
            return
        model = kwargs["model"]
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor wraps its tokenizer
        if tokenizer is None:
            raise ValueError("POSIXCallback needs the trainer's tokenizer (processing_class)")
        self.last_result = evaluate_posix(
            model, self.prompt_sets, tokenizer, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size
        )
        self._pending = {"posix": self.last_result.posix}
        LOG.info("step %d: posix %.4f", state.global_step, self.last_result.posix)

    def pop_pending_logs(self) -> dict[str, float]:
        """The value not logged yet. wit_plugin's trainers merge it into their next log line (printed,
        reported, kept in the history); with another trainer :meth:`on_log` attaches it to that line."""
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


POSIX_KEYS: tuple[str, ...] = ("wit_posix_prompts", "wit_posix_steps", "wit_posix_max_new_tokens")


def posix_callback_from_options(options: Mapping[str, Any]) -> POSIXCallback | None:
    """The callback configured by ``wit_posix_prompts`` (path), ``wit_posix_steps`` (default 100) and
    ``wit_posix_max_new_tokens`` (default 32); ``None`` when no prompts are configured."""
    path = options.get("wit_posix_prompts")
    if not path:
        return None
    steps, max_new_tokens = options.get("wit_posix_steps"), options.get("wit_posix_max_new_tokens")
    return POSIXCallback(
        path,
        every_n_steps=100 if steps is None else int(steps),
        max_new_tokens=32 if max_new_tokens is None else int(max_new_tokens),
    )
