"""Axolotl dataset type for prompt_completion rows, tagged by role."""

from wit_plugin.integrations.axolotl.dataset_types import MODULE_FORMATS
from wit_plugin.integrations.axolotl.strategies import make_loader

load = make_loader(MODULE_FORMATS["prompt_completion"])
