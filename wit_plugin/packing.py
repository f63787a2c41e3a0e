"""Packed rows must not attend to each other: the attention implementation chosen, or refused, under packing.

Prompt text repeats across rows (system prompts, template tokens), so a row that can see the rows packed
before it learns to copy them: its per-role losses, the numbers WIT is tuned on, come out biased. Both adapters
(Axolotl's ``sample_packing``, TRL's ``packing`` / ``padding_free``) call :func:`default_attention` when the
user chose no implementation, and refuse one that cannot keep the sequences apart (which ones can is in
:mod:`wit_plugin.compat`).
"""

from __future__ import annotations

import importlib.util
import logging

LOG = logging.getLogger(__name__)

ISOLATING_CHOICES = "sdpa, eager, flex_attention or flash_attention_2"


class PackingAttentionError(ValueError):
    """Packed rows would attend to each other under the configured attention implementation."""


def default_attention(on_cpu: bool, half_precision: bool) -> str:
    """Flash-attention (varlen) on CUDA when it is installed and the model runs in bf16/fp16 (its kernels take
    nothing else), else sdpa with the block mask transformers builds from the restarting ``position_ids``."""
    import torch

    if (
        half_precision
        and not on_cpu
        and torch.cuda.is_available()
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return "sdpa"


def log_choice(implementation: str, packing_keys: str) -> None:
    LOG.warning(
        "wit: %s with no attention implementation set: using attn_implementation=%s, which keeps packed "
        "sequences apart",
        packing_keys,
        implementation,
    )
