"""Let a Hugging Face causal LM return its final hidden states instead of logits, for the fused loss.

The fused loss (:mod:`wit_plugin.loss.linear_ce`) needs the decoder's last hidden state and the LM head's
weight, never the logits. :class:`HiddenStatesForward` is installed once on the model's instance ``forward``;
while :meth:`~HiddenStatesForward.enabled`, that forward calls the decoder (``self.model``) and skips the
head. It is installed on the instance, not bypassed by the caller, so whatever calls the model the usual way
(DDP, PEFT's wrappers, Accelerate's autocast wrapper, which rebinds the instance forward it finds) still runs
it. Install it before those wrappers are applied (e.g. before ``accelerator.prepare``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from wit_plugin.compat import FUSED_LOSS_MODEL_TYPES, forward_cache_name, output_cache, unwrap_model


@dataclass
class HiddenStatesOutput(ModelOutput):
    """What the patched forward returns: the causal LM's output with ``last_hidden_state`` for logits."""

    last_hidden_state: torch.Tensor | None = None
    cache: Any = None  # named as transformers >= 5.24 names it (see wit_plugin.compat)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class LMHead:
    """What the fused loss needs to compute the logits itself: logits = softcap·tanh((h·Wᵀ + b) / softcap)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None


def _plain_lm_head(causal_lm: nn.Module) -> nn.Linear:
    head = getattr(causal_lm, "lm_head", None)
    if type(head) is not nn.Linear:  # subclasses (LoRA, quantised, modules_to_save) differ
        raise ValueError(
            f"the LM head is a {type(head).__name__}, not a plain nn.Linear: the fused loss reads lm_head.weight "
            "directly and would skip an adapter, a trainable copy or a quantisation; do not adapt lm_head "
            "(LoRA target_modules / modules_to_save), or use the eager loss"
        )
    if head.weight.dim() != 2 or head.weight.numel() == 0:
        raise ValueError("the LM head weight is sharded (ZeRO-3 / FSDP): the fused loss needs the full weight")
    return head


_ACTIVE = "_wit_returns_hidden_states"  # the per-instance switch :meth:`HiddenStatesForward.enabled` flips


def _rebindable(instance_forward: Any, causal_lm: nn.Module) -> Callable[..., Any]:
    """The forward to fall back on, called as ``fallback(module, *args)`` for the module actually running."""
    if instance_forward is None:
        return type(causal_lm).forward
    if isinstance(instance_forward, MethodType) and instance_forward.__self__ is causal_lm:
        return instance_forward.__func__
    return lambda module, *args, **kwargs: instance_forward(*args, **kwargs)  # a wrapper bound elsewhere: as found


class HiddenStatesForward:
    """Installed on a causal LM's instance ``forward``; inside :meth:`enabled` it returns hidden states."""

    def __init__(self, model: nn.Module) -> None:
        causal_lm = unwrap_model(model)
        model_type = getattr(getattr(causal_lm, "config", None), "model_type", None)
        if model_type not in FUSED_LOSS_MODEL_TYPES:
            raise ValueError(
                f"the fused loss supports causal LMs of type {', '.join(sorted(FUSED_LOSS_MODEL_TYPES))}; "
                f"got {type(causal_lm).__name__} (model_type {model_type!r}): use the eager loss"
            )
        _plain_lm_head(causal_lm)
        self.causal_lm = causal_lm
        self._instance_forward = causal_lm.__dict__.get("forward")  # e.g. a wrapper installed before us
        fallback = _rebindable(self._instance_forward, causal_lm)
        setattr(causal_lm, _ACTIVE, False)

        # ``module`` is whatever the method is bound to: a deep copy of the model runs its own weights, and its
        # own switch, rather than the original's.
        def forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
            if getattr(module, _ACTIVE, False):
                return _hidden_states_forward(module, *args, **kwargs)
            return fallback(module, *args, **kwargs)

        # Trainers read the forward's signature to decide which dataset columns to keep: keep it the model's.
        forward.__signature__ = inspect.signature(type(causal_lm).forward)  # type: ignore[attr-defined]
        causal_lm.forward = MethodType(forward, causal_lm)

    def head(self) -> LMHead:
        """The head's current parameters (read on every call: ``.to()`` or resizing may replace them)."""
        linear = _plain_lm_head(self.causal_lm)
        softcap = getattr(self.causal_lm.config, "final_logit_softcapping", None)
        return LMHead(linear.weight, linear.bias, softcap)

    @contextmanager
    def enabled(self) -> Iterator[LMHead]:
        """Within the block the model returns :class:`HiddenStatesOutput`; yields the head to apply."""
        setattr(self.causal_lm, _ACTIVE, True)
        try:
            yield self.head()
        finally:
            setattr(self.causal_lm, _ACTIVE, False)

    def remove(self) -> None:
        """Restore the forward found at installation."""
        delattr(self.causal_lm, _ACTIVE)
        if self._instance_forward is None:
            del self.causal_lm.forward
        else:
            self.causal_lm.forward = self._instance_forward


def _hidden_states_forward(
    module: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    use_cache: bool | None = None,
    logits_to_keep: int | torch.Tensor = 0,
    **kwargs: Any,
) -> HiddenStatesOutput:
    """The supported ``*ForCausalLM.forward`` up to, not including, the LM head."""
    if labels is not None:
        raise ValueError("the hidden-states forward computes no loss: give the labels to the fused loss instead")
    if cache is not None:  # a caller's ``past_key_values=`` (transformers < 5.24) arrives in kwargs unchanged
        kwargs[forward_cache_name(module.model.forward)] = cache
    outputs = module.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        **kwargs,
    )
    keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return HiddenStatesOutput(
        last_hidden_state=outputs.last_hidden_state[:, keep, :],
        cache=output_cache(outputs),
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )
