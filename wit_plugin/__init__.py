"""Weighted Instruction Tuning for Axolotl and TRL.

The core (roles, tagging, training, loss) imports neither framework. What a framework's user names is loaded on
first access only: ``wit_plugin.WITPlugin`` (what Axolotl's ``plugins:`` list names) and, for TRL,
``from wit_plugin import WITSFTTrainer, WITConfig`` (with ``WITSFTMixin``, ``WITOptionError`` and
``text_contents``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from wit_plugin.roles import Role, RoleWeights

__version__ = "0.1.0"
_LAZY = {
    "WITPlugin": "wit_plugin.integrations.axolotl.plugin",
    "WITConfig": "wit_plugin.integrations.trl",
    "WITOptionError": "wit_plugin.integrations.trl",
    "WITSFTMixin": "wit_plugin.integrations.trl",
    "WITSFTTrainer": "wit_plugin.integrations.trl",
    "text_contents": "wit_plugin.integrations.trl",
}
__all__ = [
    "Role",
    "RoleWeights",
    "WITConfig",
    "WITOptionError",
    "WITPlugin",
    "WITSFTMixin",
    "WITSFTTrainer",
    "__version__",
    "text_contents",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wit_plugin' has no attribute {name!r}")
