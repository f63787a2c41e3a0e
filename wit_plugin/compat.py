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
* Axolotl 0.21 adds a nested ``context_parallel: {size: N}`` beside the flat ``context_parallel_size``; both
  releases fill in ``sequence_len`` (default 512) only after a plugin's ``register()`` has seen the config.
* The loss's N: every supported transformers release counts it in ``Trainer._get_num_items_in_batch(batch_samples,
  device)`` (same signature, called once per optimiser step and once per evaluation batch), which wit_plugin's
  mixin overrides; they differ only in how they divide by the ranks sharing one batch (5.16:
  ``parallelism_config.non_data_parallel_size`` with ``//``; 5.20: ``get_tp_size()·get_cp_size()·get_sp_size()`` with
  ``//``; 5.25: the same with ``/``). The mixin uses the three ``get_*_size`` methods, which all of them have, and
  ``/`` (a sum of weights is no integer). Axolotl 0.21's own override (recounting labels under tensor parallelism,
  which the plugin refuses) comes after the mixin's in the trainer's MRO.
* Optuna 4.9 renames ``RetryFailedTrialCallback`` (``RetryHeartbeatStaleTrialCallback``) and ``RDBStorage``'s
  ``failed_trial_callback`` (``heartbeat_stale_trial_callback``).
* Not between releases but kept here as well: model wrappers (:func:`unwrap_model`), the ``logits_to_keep``
  probe for models that may lack it, and the families the fused loss has been checked against.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

# --- torch / PEFT: the model inside its wrappers ------------------------------------------------------------------


def unwrap_model(model: Any) -> Any:
    """The model inside (Distributed)DataParallel, PEFT and ``torch.compile`` wrappers, in any nesting: the module
    whose ``forward`` signature, ``config`` and ``lm_head`` are the causal LM's own (a wrapper's forward shows
    only ``**kwargs``). Not a version difference: needed as long as these wrappers exist."""
    import torch

    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


# --- transformers: the KV cache's name -------------------------------------------------------------------------


def output_cache(outputs: Any) -> Any:
    """A model output's KV cache, under whichever name its class declares (never the deprecated alias):
    ``cache`` from transformers 5.24, ``past_key_values`` before. Remove (read ``outputs.cache``) when
    transformers < 5.24 is no longer supported."""
    fields = getattr(type(outputs), "__dataclass_fields__", {})
    return getattr(outputs, "cache" if "cache" in fields else "past_key_values")


def forward_cache_name(forward: Any) -> str:
    """The cache parameter of a particular forward (a decoder may keep the old name longer than its outputs):
    ``cache`` from transformers 5.24, ``past_key_values`` before. Remove when transformers < 5.24 is no longer
    supported and every model family's forward takes ``cache``."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache_value: Any) -> dict[str, Any]:
    """``model``'s forward keyword for its KV cache (looking through its wrappers, :func:`unwrap_model`)."""
    return {_forward_cache_name_of(type(unwrap_model(model))): cache_value}


@cache
def _forward_cache_name_of(model_class: type) -> str:
    return forward_cache_name(model_class.forward)


# --- transformers: what a causal LM's forward takes ---------------------------------------------------------------


def logits_to_keep(model: Any) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` where the model's forward takes it (looking through its wrappers), else nothing:
    a prompt needs its last position's logits only. Every transformers causal LM of the supported releases
    (5.16–5.25) takes it; a custom or remote-code model may not. Remove when wit_plugin accepts only
    transformers' own model classes."""
    parameters = inspect.signature(unwrap_model(model).forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


# Causal LMs whose forward is exactly ``logits = lm_head(model(...).last_hidden_state)`` (+ Gemma's softcap),
# checked against transformers 5.16.1–5.25.0, so the fused loss may call ``model.model`` and apply the head itself.
# MoE models are not here: their forward also adds a router loss. Re-check each family's forward (and extend the
# set) whenever the supported transformers range moves; nothing here can be removed with an old release.
FUSED_LOSS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"})


# --- transformers: GGUF ---------------------------------------------------------------------------------------


def gguf_load_kwargs() -> dict[str, Any]:
    """``from_pretrained`` arguments that load a GGUF file as plain, savable weights."""
    import transformers

    # >= 5.20: dequantize, so the quantizer is dropped after loading. Remove the test (keep the branch's value)
    # when transformers < 5.20 is no longer supported.
    if hasattr(transformers, "GgufConfig"):
        return {"quantization_config": transformers.GgufConfig(dequantize=True)}
    return {}


# --- TRL ----------------------------------------------------------------------------------------------------------


def pop_trl_private_inputs(inputs: dict[str, Any]) -> None:
    """Drop what TRL's ``prediction_step`` adds for its own ``compute_loss`` (TRL 1.9: ``_prediction_loss_only``;
    a no-op where it is absent). Remove when no supported TRL adds it."""
    inputs.pop("_prediction_loss_only", None)


def trl_token_divisor(trainer: Any) -> int:
    """TRL 1.16 counts a tensor-parallel group's replicated batch once (``_tp_size``); TRL 1.9 has no such
    correction (1). When TRL < 1.16 is no longer supported, read ``trainer._tp_size`` directly."""
    return int(getattr(trainer, "_tp_size", 1) or 1)


# --- Axolotl ------------------------------------------------------------------------------------------------------

# Class attributes of wit_plugin's Axolotl trainer: Axolotl 0.21 logs ``ppl = exp(loss)`` unless told not to, and
# exp of a weighted loss is not a perplexity (0.19 ignores the attribute and always logs it). Needed from 0.21 on.
AXOLOTL_TRAINER_ATTRIBUTES: dict[str, Any] = {"reports_token_perplexity": False}


# Axolotl's trainer drops these from its log lines: 0.19 computes them as exp of the (weighted) loss. Remove when
# Axolotl 0.19 (< 0.21) is no longer supported.
AXOLOTL_WEIGHTED_PERPLEXITY_KEYS = ("ppl", "eval_ppl")


def axolotl_context_parallel_sizes(cfg: Any) -> dict[str, int]:
    """Each spelling of context parallelism an Axolotl config sets, with its size: the flat
    ``context_parallel_size`` (0.19, 0.21), its deprecated alias ``sequence_parallel_degree`` (0.19, 0.21) and
    0.21's nested ``context_parallel: {size: N}`` (which 0.21 checks against the flat key; 0.19 ignores it). The
    nested form is needed while Axolotl >= 0.21 is supported; the flat ones while any release still reads them."""
    sizes = {key: cfg.get(key) for key in ("context_parallel_size", "sequence_parallel_degree")}
    sizes["context_parallel.size"] = (cfg.get("context_parallel") or {}).get("size")
    return {key: int(size) for key, size in sizes.items() if size}


def axolotl_sequence_len(cfg: Any) -> int:
    """``sequence_len`` as Axolotl will fill it in: the config's own, else the schema's default (512 in 0.19 and
    0.21), which a plugin's ``register()`` does not see yet (the schema fills it in later). Read from Axolotl's
    schema, so a release that changes the default is followed; needed while any supported Axolotl validates the
    config after ``register()``."""
    from axolotl.utils.schemas.config import AxolotlInputConfig

    return int(cfg.get("sequence_len") or AxolotlInputConfig.model_fields["sequence_len"].default)


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


# --- Optuna: the callback run on a trial whose heartbeat lapsed ---------------------------------------------------


def optuna_rdb_storage(url: str, engine_kwargs: dict[str, Any], heartbeat_s: int, grace_s: int, max_retry: int) -> Any:
    """An Optuna ``RDBStorage`` with heartbeats whose stale trials are retried. Optuna 4.9 renames the retrying
    callback ``RetryFailedTrialCallback`` → ``RetryHeartbeatStaleTrialCallback`` and its keyword
    ``failed_trial_callback`` → ``heartbeat_stale_trial_callback`` (the old names warn, and go in 6.0)."""
    from optuna import storages
    from optuna.storages import RDBStorage

    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    parameters = inspect.signature(RDBStorage.__init__).parameters
    keyword = (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    )
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_s,
        grace_period=grace_s,
        **{keyword: retry(max_retry=max_retry)},
    )
