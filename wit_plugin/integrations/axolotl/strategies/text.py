"""Axolotl dataset type for text rows, tagged by role."""

from wit_plugin.integrations.axolotl.strategies import MODULE_FORMATS, make_loader

load = make_loader(MODULE_FORMATS["text"])
