"""The weighted loss inside a ``transformers.Trainer`` (shared by the Axolotl and TRL adapters).

The loss goes in as the trainer's ``compute_loss_func``, so the trainer's own bookkeeping stays as it is: it
passes one ``num_items_in_batch`` for all gradient-accumulation micro-batches of an optimiser step (and, with
``average_tokens_across_devices``, all ranks), never divides by the accumulation steps again, and multiplies by the
world size to undo DDP's gradient averaging. The mixin computes that N itself (``_get_num_items_in_batch``, the
hook every supported transformers release calls once per step and once per evaluation batch) from the batches'
roles, message weights and the weights in effect at the step: targets with w > 0 or Σ w (``wit_normalize``),
gathered over ranks as transformers gathers its label count. The weights in effect follow their schedules
(:mod:`wit_plugin.schedules`) from the trainer's global step.
"""

from __future__ import annotations

import inspect
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from wit_plugin import options
from wit_plugin.loss.forward_patch import HiddenStatesForward, HiddenStatesOutput
from wit_plugin.loss.linear_ce import resolve_loss_impl, weighted_linear_cross_entropy
from wit_plugin.loss.weighted import denominator, weighted_token_loss
from wit_plugin.options import FUSED_LOSS_IMPLS, defaults
from wit_plugin.roles import MESSAGE_WEIGHTS_KEY, ROLES_KEY, TRAINABLE_ROLES, RoleSchedules, RoleWeights
from wit_plugin.schedules import progress
from wit_plugin.training.collation import RoleCollator
from wit_plugin.training.metrics import RoleMetrics

LOG = logging.getLogger(__name__)


def parameter_sharding(fsdp: Any, deepspeed: Any) -> str | None:
    """FSDP or DeepSpeed ZeRO-3 (a config dict or a JSON file's path), which shard parameters, the LM head weight
    included, across ranks: the fused losses need the whole head."""
    if fsdp:
        return "FSDP"
    if isinstance(deepspeed, (str, Path)) and Path(deepspeed).is_file():
        deepspeed = json.loads(Path(deepspeed).read_text())
    if isinstance(deepspeed, dict) and (deepspeed.get("zero_optimization") or {}).get("stage") == 3:
        return "DeepSpeed ZeRO-3"
    return None


def check_fused_loss(requested: str, sharding: str | None) -> None:
    """Refuse ``wit_loss_impl=requested`` when it is fused and ``sharding`` splits the LM head weight it needs;
    each adapter's config check calls it, once, and reports the error with its other problems."""
    if sharding is not None and requested in FUSED_LOSS_IMPLS:
        raise ValueError(
            f"wit_loss_impl={requested!r} with {sharding}: the fused loss needs the whole LM head weight; use "
            "'eager' (or 'auto', which picks it)"
        )


def loss_impl_under(requested: str, sharding: str | None) -> str:
    """The loss implementation to install, for a ``requested`` one the adapter checked
    (:func:`check_fused_loss`): ``auto`` computes eagerly under parameter sharding."""
    if sharding is not None and requested == "auto":
        LOG.info("wit: %s shards the LM head, so the loss is computed eagerly", sharding)
        return "eager"
    return requested


class WITTrainerMixin:
    """Mix into a ``transformers.Trainer`` subclass and call :meth:`setup_wit` at the end of ``__init__``."""

    wit_weights: RoleWeights  # in effect at the current step
    wit_schedules: RoleSchedules

    def setup_wit(
        self,
        weights: RoleWeights | RoleSchedules,
        loss_impl: str = defaults()["wit_loss_impl"],
        role_metrics: str = defaults()["wit_role_metrics"],
        normalize: str = defaults()["wit_normalize"],
    ) -> None:
        """Install the weighted loss; call before training starts (the model must not be wrapped yet)."""
        options.check("wit_role_metrics", role_metrics)
        self._wit_normalize = options.check("wit_normalize", normalize)
        self.wit_schedules = RoleSchedules.of(weights)
        self.wit_weights = self.wit_schedules.initial
        self._wit_table = self.wit_weights.table()
        ever = self.wit_schedules.ever  # labels mask only the roles no step trains
        self._wit_all_roles = role_metrics == "all"
        self._wit_metric_roles = [r for r in TRAINABLE_ROLES if self._wit_all_roles or getattr(ever, r.label) > 0]
        self._wit_metrics = {"train": RoleMetrics(self._wit_metric_roles), "eval": RoleMetrics(self._wit_metric_roles)}
        self._wit_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self._wit_impl, self._wit_forward = self._install_loss_impl(loss_impl)
        self.compute_loss_func = self._wit_loss
        args = self.args  # type: ignore[attr-defined]
        if not args.average_tokens_across_devices:
            LOG.info("wit: average_tokens_across_devices=True, so N counts weighted tokens on every rank")
            args.average_tokens_across_devices = True
        for name in ("data_collator", "eval_data_collator", "train_data_collator"):
            collator = getattr(self, name, None)
            if collator is not None and not isinstance(collator, RoleCollator):
                setattr(self, name, RoleCollator(collator, ever))
        LOG.info(
            "wit: role weights %s; loss %s, normalised by %s",
            self.wit_schedules.describe(),
            self._wit_impl,
            "the number of weighted targets" if self._wit_normalize == "tokens" else "the sum of the weights",
        )

    @property
    def wit_loss_impl(self) -> str:
        """The loss implementation in use (what ``auto`` resolved to)."""
        return self._wit_impl

    def _install_loss_impl(self, name: str) -> tuple[str, HiddenStatesForward | None]:
        """The loss implementation to run, and the hidden-states forward it needs (None for eager)."""
        if options.check("wit_loss_impl", name) == "eager":
            return name, None
        model = self.model  # type: ignore[attr-defined]
        impl = resolve_loss_impl(name, next(model.parameters()).device)
        try:
            return impl, HiddenStatesForward(model)
        except ValueError as error:
            if name != "auto":
                raise
            LOG.warning("wit: falling back to the eager loss (materialised logits): %s", error)
            return "eager", None

    def _set_signature_columns_if_needed(self) -> None:
        """Keep ``wit_roles`` (and the message weights) when the trainer drops dataset columns the model's forward
        does not take."""
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        for key in (ROLES_KEY, MESSAGE_WEIGHTS_KEY):
            if key not in self._signature_columns:  # type: ignore[attr-defined]
                self._signature_columns.append(key)  # type: ignore[attr-defined]

    def _wit_follow_schedule(self) -> None:
        """The weights in effect at the trainer's global step (before training: the schedules' start)."""
        if self.wit_schedules.constant:
            return
        state = self.state  # type: ignore[attr-defined]
        weights = self.wit_schedules.at(progress(state.global_step, state.max_steps))
        if weights != self.wit_weights:
            self.wit_weights, self._wit_table = weights, weights.table()

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """N for the batches of one optimiser step (or one evaluation batch): Σ over them of
        :func:`~wit_plugin.loss.weighted.denominator` under the weights in effect now, summed over ranks and
        divided by the ranks that share one batch (tensor, context and sequence parallelism), as transformers
        treats its label count."""
        if not batch_samples or ROLES_KEY not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)  # type: ignore[misc]
        self._wit_follow_schedule()
        local = sum(
            denominator(
                batch["input_ids"],
                batch[ROLES_KEY],
                self._wit_table,
                self._wit_normalize,
                batch.get(MESSAGE_WEIGHTS_KEY),
            )
            for batch in batch_samples
        )
        args = self.args  # type: ignore[attr-defined]
        total = torch.as_tensor(local, dtype=torch.float64, device=device)
        if args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()  # type: ignore[attr-defined]
        shared = self.get_tp_size() * self.get_cp_size() * self.get_sp_size()  # type: ignore[attr-defined]
        return total / shared

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if ROLES_KEY not in inputs:
            raise KeyError(
                f"batch has no '{ROLES_KEY}': the collator was not wrapped by wit_plugin (fields: {sorted(inputs)})"
            )
        roles = inputs.pop(ROLES_KEY)
        self._wit_batch = (inputs["input_ids"], roles, inputs.pop(MESSAGE_WEIGHTS_KEY, None))
        if "position_ids" in inputs:
            inputs["use_cache"] = False  # packed rows: a KV cache would be built across sequence boundaries
        fused = self._wit_forward is not None and model.training  # evaluation keeps logits for prediction_step
        with self._wit_forward.enabled() if fused else nullcontext():  # type: ignore[union-attr]
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    def _wit_loss(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        assert self._wit_batch is not None, "compute_loss stores the batch before the model runs"
        input_ids, roles, message_weights = self._wit_batch
        self._wit_batch = None
        if num_items_in_batch is None:  # a caller that counted nothing (evaluation outside prediction_step)
            num_items_in_batch = denominator(input_ids, roles, self._wit_table, self._wit_normalize, message_weights)
        if isinstance(outputs, HiddenStatesOutput):
            assert self._wit_forward is not None, "only the installed hidden-states forward returns these"
            head = self._wit_forward.head()
            hidden = outputs.last_hidden_state
            if hidden.dtype != head.weight.dtype:
                # Under mixed precision Accelerate converts the model's outputs to fp32, hidden states included;
                # the head would have taken them in its own dtype, and bf16 -> fp32 -> bf16 is exact.
                hidden = hidden.to(head.weight.dtype)
            # The head runs here, outside the model's forward and so outside the autocast Accelerate wraps it in:
            # enter that autocast again, so an fp32 head under bf16/fp16 mixed precision computes in that dtype, as
            # inside the model (and CCE, whose backward takes only bf16/fp16 hidden states, can train it).
            accelerator = getattr(self, "accelerator", None)
            with accelerator.autocast() if accelerator is not None else nullcontext():
                result = weighted_linear_cross_entropy(
                    hidden,
                    head.weight,
                    input_ids,
                    roles,
                    self._wit_table,
                    num_items_in_batch,
                    lm_head_bias=head.bias,
                    softcap=head.softcap,
                    impl=self._wit_impl,
                    include_zero_weight=self._wit_all_roles,
                    message_weights=message_weights,
                )
        else:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            result = weighted_token_loss(
                logits,
                input_ids,
                roles,
                self._wit_table,
                num_items_in_batch,
                message_weights=message_weights,
                include_zero_weight=self._wit_all_roles,
            )
        model = self.model  # type: ignore[attr-defined]
        self._wit_metrics["train" if model.training else "eval"].add(result.stats)
        return result.loss

    def _wit_reduce(self) -> Any:
        """Sums per-role totals over ranks (every rank must call it), or None in a single process."""
        accelerator = getattr(self, "accelerator", None)
        if accelerator is None or accelerator.num_processes == 1:
            return None

        def reduce(totals: torch.Tensor) -> torch.Tensor:
            return accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()

        return reduce

    def wit_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Per-role metrics since the last training-step log (a log with 'loss'), and the weight of each role in
        effect at the last step (``wit/weight_<role>``); none for other logs."""
        if "loss" not in logs:
            return {}
        weights = {f"wit/weight_{role.label}": getattr(self.wit_weights, role.label) for role in TRAINABLE_ROLES}
        return {**self._wit_metrics["train"].summary(self._wit_reduce()), **weights}

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """Per-role metrics of exactly this loop, added to its metrics under its own prefix (``eval``,
        ``test`` from ``predict``, ``eval_<name>`` for one of several eval datasets)."""
        loop = super().evaluation_loop  # type: ignore[misc]
        prefix = inspect.signature(loop).bind(*args, **kwargs).arguments.get("metric_key_prefix", "eval")
        self._wit_metrics["eval"] = RoleMetrics(self._wit_metric_roles)
        output = loop(*args, **kwargs)
        output.metrics.update(self._wit_metrics["eval"].summary(self._wit_reduce(), prefix=f"{prefix}_"))
        return output

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        logs.update(self.wit_logs(logs))
        for callback in self.callback_handler.callbacks:  # type: ignore[attr-defined]
            if hasattr(callback, "pop_pending_logs"):  # an EvaluationCallback's values since the last log
                logs.update(callback.pop_pending_logs())
        super().log(logs, *args, **kwargs)  # type: ignore[misc]
