"""Axolotl dataset type for chat rows, tagged by role."""

from wit_plugin.integrations.axolotl.strategies import MODULE_FORMATS, make_loader, versioned

load = make_loader(MODULE_FORMATS["chat_template"])
__getattr__ = versioned(load)
