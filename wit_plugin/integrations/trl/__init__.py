"""TRL adapter: ``WITConfig`` (an ``SFTConfig`` with the ``wit_*`` keys), ``WITSFTTrainer`` and, for a trainer
class of your own, ``WITSFTMixin``."""

from wit_plugin.integrations.trl.config import WITConfig, WITOptionError
from wit_plugin.integrations.trl.data import text_contents
from wit_plugin.integrations.trl.trainer import WITSFTMixin, WITSFTTrainer

__all__ = ["WITConfig", "WITOptionError", "WITSFTMixin", "WITSFTTrainer", "text_contents"]
