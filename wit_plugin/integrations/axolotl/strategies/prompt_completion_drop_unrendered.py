"""Axolotl dataset type ``prompt_completion`` with ``wit_drop_unrendered``: what the chat template does not render is dropped
(and counted) instead of refused. The plugin points a dataset here; the type itself says so to the tagger."""

from wit_plugin.integrations.axolotl.dataset_types import MODULE_FORMATS
from wit_plugin.integrations.axolotl.strategies import make_loader

load = make_loader(MODULE_FORMATS["prompt_completion"])
