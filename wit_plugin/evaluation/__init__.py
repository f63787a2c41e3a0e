"""Evaluation beyond the training loss: POSIX prompt sensitivity (library, variants, trainer callback)."""

from __future__ import annotations

from wit_plugin.evaluation.callback import POSIXCallback
from wit_plugin.evaluation.posix import POSIXResult, Response, SetResult, evaluate_posix, load_model, psi
from wit_plugin.evaluation.prompts import Prompt, PromptSet, validate_prompt_sets

__all__ = [
    "POSIXCallback",
    "POSIXResult",
    "Prompt",
    "PromptSet",
    "Response",
    "SetResult",
    "evaluate_posix",
    "load_model",
    "psi",
    "validate_prompt_sets",
]
