"""The weighted loss inside a ``transformers.Trainer``, shared by the Axolotl and TRL adapters.

``collation`` lays role codes out like ``input_ids``, ``mixin`` installs the loss and per-role ``metrics``,
``records`` writes (and ``wit compare`` reads) ``wit_run.json``, and ``install`` is the one call both adapters
make once their trainer exists. Names are loaded on first access: they import torch and transformers, which
``wit --help`` must not.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "WITTrainerMixin": "mixin",
    "check_fused_loss": "mixin",
    "loss_impl_under": "mixin",
    "parameter_sharding": "mixin",
    "RoleCollator": "collation",
    "CollationError": "collation",
    "RoleMetrics": "metrics",
    "RunRecordCallback": "records",
    "read_record": "records",
    "RunDescription": "install",
    "install_wit": "install",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wit_plugin.training' has no attribute {name!r}")
    return getattr(import_module(f"wit_plugin.training.{_EXPORTS[name]}"), name)
