"""Axolotl's trainer with the weighted loss and per-role metrics."""

from axolotl.core.trainers.base import AxolotlTrainer

from wit_plugin.compat import AXOLOTL_TRAINER_ATTRIBUTES
from wit_plugin.trainer import WITTrainerMixin


class AxolotlWITTrainer(WITTrainerMixin, AxolotlTrainer):
    """AxolotlTrainer whose loss is Σ w(role)·CE / N; set up by ``WITPlugin.post_trainer_create``. It logs no
    ``ppl``: exp of a weighted loss is not a perplexity."""


for _name, _value in AXOLOTL_TRAINER_ATTRIBUTES.items():
    setattr(AxolotlWITTrainer, _name, _value)
