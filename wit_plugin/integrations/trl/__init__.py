"""TRL adapter: ``WITConfig`` (an ``SFTConfig`` with the ``wit_*`` keys) and ``WITSFTTrainer``."""

from wit_plugin.integrations.trl.config import WITConfig, WITOptionError
from wit_plugin.integrations.trl.data import text_contents
from wit_plugin.integrations.trl.trainer import WITSFTTrainer

__all__ = ["WITConfig", "WITOptionError", "WITSFTTrainer", "text_contents"]
