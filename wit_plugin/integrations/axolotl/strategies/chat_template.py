"""Axolotl dataset type for chat rows, tagged by role."""

from wit_plugin.integrations.axolotl.strategies import make_loader

load = make_loader("chat")
