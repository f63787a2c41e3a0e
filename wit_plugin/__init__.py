"""Weighted Instruction Tuning for Axolotl and TRL.

The core (roles, tagging, collation, loss) imports neither framework; ``wit_plugin.WITPlugin`` (what
Axolotl's ``plugins:`` list names) is loaded on first access only.
"""

from __future__ import annotations

from typing import Any

from wit_plugin.roles import Role, RoleWeights

__version__ = "0.1.0"
__all__ = ["Role", "RoleWeights", "WITPlugin", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "WITPlugin":
        from wit_plugin.integrations.axolotl.plugin import WITPlugin

        return WITPlugin
    raise AttributeError(f"module 'wit_plugin' has no attribute {name!r}")
