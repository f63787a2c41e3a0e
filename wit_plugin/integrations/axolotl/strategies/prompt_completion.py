"""Axolotl dataset type for prompt_completion rows, tagged by role."""

from wit_plugin.integrations.axolotl.strategies import MODULE_FORMATS, make_loader, versioned

load = make_loader(MODULE_FORMATS["prompt_completion"])
__getattr__ = versioned(load)
