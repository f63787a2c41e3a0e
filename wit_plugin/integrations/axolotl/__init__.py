"""Axolotl adapter: plugin, config keys, dataset strategies, trainer."""
