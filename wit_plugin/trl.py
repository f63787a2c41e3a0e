"""Weighted Instruction Tuning in TRL with one import: ``from wit_plugin.trl import WITSFTTrainer, WITConfig``."""

from wit_plugin.integrations.trl import WITConfig, WITOptionError, WITSFTTrainer, text_contents

__all__ = ["WITConfig", "WITOptionError", "WITSFTTrainer", "text_contents"]
