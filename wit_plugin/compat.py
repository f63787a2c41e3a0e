"""Every difference between the supported releases, in one place.

Supported: Axolotl 0.19–0.21, transformers 5.16–5.25, TRL 1.9–1.16 (README's table). Each difference is
detected from what the installed package *has*, never from a version number, so a backport or a patch release
takes the right branch.

* transformers 5.24 renames the KV cache ``past_key_values`` → ``cache`` in model outputs and forwards (the old
  keyword is accepted, with a warning per call, until 5.40; a ``ModelOutput`` subclass can no longer declare a
  ``past_key_values`` field at all).
* transformers 5.20 loads every ``gguf_file`` through a GGUF quantizer that ``save_pretrained`` refuses; a
  dequantizing ``GgufConfig`` gives the plain weights (identical tensors to the 5.16 conversion).
* TRL 1.9 hands its own ``compute_loss`` a ``_prediction_loss_only`` input; TRL 1.16 counts a tensor-parallel
  group's tokens once (``_tp_size``).
* Axolotl 0.21 logs ``ppl = exp(loss)`` unless a trainer sets ``reports_token_perplexity = False`` (0.19 always
  logs it; the attribute is then ignored, and wit_plugin's trainer drops the key before it is logged).
* Attention under sample packing: Axolotl 0.19 and 0.21 spell it the same way (``attn_implementation``, with the
  deprecated booleans ``sdp_attention``, ``flash_attention``, ``flex_attention``, ``eager_attention``...
  mapped onto it) and both keep the multipack collator's ``attention_mask`` of sequence numbers (1, 1, 2, 2...)
  unless the implementation is one Axolotl knows to separate packed rows; read from Axolotl's own tables.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

# --- transformers: the KV cache's name -------------------------------------------------------------------------


@cache
def cache_field() -> str:
    """The name model outputs give their KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def output_cache(outputs: Any) -> Any:
    """A model output's KV cache, under whichever name its class declares (never the deprecated alias)."""
    fields = getattr(type(outputs), "__dataclass_fields__", {})
    return getattr(outputs, "cache" if "cache" in fields else "past_key_values")


def forward_cache_name(forward: Any) -> str:
    """The cache parameter of a particular forward (a decoder may keep the old name longer than its outputs)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache_value: Any) -> dict[str, Any]:
    """``model``'s forward keyword for its KV cache, looking through PEFT and ``torch.compile`` wrappers (whose
    own forward shows only ``**kwargs``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "_orig_mod", inner)
    return {_forward_cache_name_of(type(inner)): cache_value}


@cache
def _forward_cache_name_of(model_class: type) -> str:
    return forward_cache_name(model_class.forward)


# --- transformers: GGUF ---------------------------------------------------------------------------------------


def gguf_load_kwargs() -> dict[str, Any]:
    """``from_pretrained`` arguments that load a GGUF file as plain, savable weights."""
    import transformers

    if hasattr(transformers, "GgufConfig"):  # >= 5.20: dequantize, so the quantizer is dropped after loading
        return {"quantization_config": transformers.GgufConfig(dequantize=True)}
    return {}


# --- TRL ----------------------------------------------------------------------------------------------------------


def pop_trl_private_inputs(inputs: dict[str, Any]) -> None:
    """Drop what TRL's ``prediction_step`` adds for its own ``compute_loss`` (TRL 1.9: ``_prediction_loss_only``)."""
    inputs.pop("_prediction_loss_only", None)


def trl_token_divisor(trainer: Any) -> int:
    """TRL 1.16 counts a tensor-parallel group's replicated batch once; TRL 1.9 has no such correction."""
    return int(getattr(trainer, "_tp_size", 1) or 1)


# --- Axolotl ------------------------------------------------------------------------------------------------------

# Class attributes of wit_plugin's Axolotl trainer: Axolotl 0.21 logs ``ppl = exp(loss)`` unless told not to, and
# exp of a weighted loss is not a perplexity (0.19 ignores the attribute and always logs it).
AXOLOTL_TRAINER_ATTRIBUTES: dict[str, Any] = {"reports_token_perplexity": False}


# Axolotl's trainer drops these from its log lines: 0.19 computes them as exp of the (weighted) loss.
AXOLOTL_WEIGHTED_PERPLEXITY_KEYS = ("ppl", "eval_ppl")


def axolotl_attention(cfg: Any) -> tuple[str | None, str | None]:
    """The attention implementation an Axolotl config asks for and the key that asks: ``attn_implementation``,
    else the first deprecated boolean Axolotl maps onto it (in Axolotl's own priority order); (None, None) if
    none is set."""
    from axolotl.utils.schemas.enums import LEGACY_ATTN_FLAG_TO_IMPL

    if cfg.get("attn_implementation"):
        return "attn_implementation", str(cfg["attn_implementation"])
    for flag, implementation in LEGACY_ATTN_FLAG_TO_IMPL.items():
        if cfg.get(flag):
            return flag, implementation
    return None, None


def axolotl_isolates_packed_rows(implementation: str) -> bool:
    """Whether Axolotl keeps packed rows apart under ``implementation``: it drops the collator's
    ``attention_mask`` of sequence numbers (which transformers would read as a padding mask, letting every row
    of a pack see the rows before it) for varlen backends and for sdpa/eager, whose block mask transformers then
    builds from the restarting ``position_ids``. (Axolotl's ``attn_decontaminates_packing``.)"""
    from axolotl.utils.schemas.enums import ATTN_IMPLS_SUPPORTING_PACKING, attn_impl_base

    return attn_impl_base(implementation) in ATTN_IMPLS_SUPPORTING_PACKING or implementation in ("sdpa", "eager")


def transformers_isolates_packed_rows(implementation: str | None) -> bool:
    """Whether transformers separates sequences packed in one row (told apart by ``position_ids`` alone) under
    ``implementation``: exactly those with a registered mask builder (sdpa, eager, flex, the flash variants and
    any kernel registered with a flash mask); a custom attention function without one attends across rows."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return implementation is not None and implementation in ALL_MASK_ATTENTION_FUNCTIONS
