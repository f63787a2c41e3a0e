"""Axolotl's trainer with the weighted loss and per-role metrics."""

from typing import Any

from axolotl.core.trainers.base import AxolotlTrainer
from transformers import Trainer

from wit_plugin.compat import AXOLOTL_TRAINER_ATTRIBUTES, AXOLOTL_WEIGHTED_PERPLEXITY_KEYS
from wit_plugin.training.mixin import WITTrainerMixin


class _NoWeightedPerplexity(Trainer):
    """Placed after AxolotlTrainer in the MRO: Axolotl 0.19's ``log`` adds ``ppl = exp(loss)`` and then calls
    this one, which drops it before transformers logs the line."""

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key in AXOLOTL_WEIGHTED_PERPLEXITY_KEYS:
            logs.pop(key, None)
        super().log(logs, *args, **kwargs)


class AxolotlWITTrainer(WITTrainerMixin, AxolotlTrainer, _NoWeightedPerplexity):
    """AxolotlTrainer whose loss is Σ w(role)·CE / N; set up by ``WITPlugin.post_trainer_create``. It logs no
    ``ppl``: exp of a weighted loss is not a perplexity (``exp(wit/loss_response)`` is the response's)."""


for _name, _value in AXOLOTL_TRAINER_ATTRIBUTES.items():
    setattr(AxolotlWITTrainer, _name, _value)
