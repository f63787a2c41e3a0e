"""``WITSFTTrainer``: TRL's ``SFTTrainer`` training on role-tagged data with the weighted loss, and
``WITSFTMixin``, the same for an SFTTrainer subclass of the user's own (``WITSFTTrainer`` is the mixin on TRL's
class).

Two things of SFTTrainer are replaced, everything else (model loading, PEFT, collators, packing, logging,
saving) is TRL's:

* dataset preparation (:mod:`wit_plugin.integrations.trl.data`), so roles survive tokenisation, truncation
  and packing;
* the loss. SFTTrainer scores tokens without materialising the logits (TRL 1.9: ``loss_type="chunked_nll"``;
  TRL 1.16: a fused LM head) and would either skip ``compute_loss_func`` or run a second forward for it.
  Here the loss goes through ``transformers.Trainer.compute_loss`` (one forward, then the weighted loss
  installed by :class:`~wit_plugin.training.mixin.WITTrainerMixin`), and TRL's metrics are computed from the same
  logits, over the tokens the weights train.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import Trainer
from trl import SFTTrainer
from trl.trainer.utils import entropy_from_logits

from wit_plugin.compat import pop_trl_private_inputs, trl_token_divisor
from wit_plugin.integrations.trl.config import WITConfig, check_options
from wit_plugin.integrations.trl.data import AnyDataset, check_row, prepare_dataset
from wit_plugin.roles import IGNORE_INDEX
from wit_plugin.training.install import RunDescription, install_wit
from wit_plugin.training.mixin import WITTrainerMixin, parameter_sharding

LOG = logging.getLogger(__name__)


class LogitsSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is ``compute_loss_func`` on the model's logits, with TRL's metrics kept."""

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        pop_trl_private_inputs(inputs)
        inputs["use_cache"] = False  # as TRL: no cache in training, and packed rows must not build one
        labels = inputs["labels"]  # Trainer.compute_loss pops it
        loss, outputs = Trainer.compute_loss(
            self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        self._count_tokens(inputs)
        if getattr(outputs, "logits", None) is not None:  # a fused loss (wit_loss_impl) builds no logits
            self._record_metrics(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _count_tokens(self, inputs: dict[str, Any]) -> None:
        """TRL's ``num_tokens`` (input tokens seen in training so far), whatever the loss implementation."""
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:  # padding-free: one row, every position counts
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // trl_token_divisor(
                self
            )
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    @torch.no_grad()
    def _record_metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """TRL's ``entropy`` and ``mean_token_accuracy`` (over target tokens), from the logits."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        targets = labels[..., 1:]
        mask = targets != IGNORE_INDEX
        scored = logits[..., :-1, :][mask]
        entropy = entropy_from_logits(scored).sum() if len(scored) else scored.new_zeros(())
        total = gather(mask.sum()).sum()
        entropy = gather(entropy.float()).sum()
        correct = gather((scored.argmax(-1) == targets[mask]).sum()).sum()
        self._metrics[mode]["entropy"].append((entropy / total).item() if total > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)


class WITSFTMixin(WITTrainerMixin):
    """Weighted Instruction Tuning for an ``SFTTrainer`` subclass of your own, configured by :class:`WITConfig`::

        class MyTrainer(WITSFTMixin, MySFTTrainer): ...  # or WITSFTMixin, SFTTrainer

    The mixin goes first, so that it sees every batch before your hooks do and their ``super()`` calls reach
    TRL. What it changes of SFTTrainer: the config is checked, datasets are prepared with their roles
    (:mod:`~wit_plugin.integrations.trl.data`), and the loss goes through :class:`LogitsSFTTrainer` (added as
    a base when the class is made, so it stands right above ``SFTTrainer``: your ``compute_loss`` calling
    ``super()`` gets the weighted loss). ``compute_loss_func`` and ``formatting_func`` are refused (the first
    would replace the weighted loss, the second flattens rows to text and loses their roles), and so is a
    ``_prepare_dataset`` of your own, which the role-carrying preparation would silently replace, and a
    ``compute_loss`` that never reaches the weighted loss (at its first call).
    """

    args: WITConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        add_logits_loss(cls)

    def __init__(self, model: Any, args: WITConfig | None = None, **kwargs: Any) -> None:
        name = type(self).__name__
        args = WITConfig() if args is None else args
        if not isinstance(args, WITConfig):
            raise TypeError(f"{name} needs a WITConfig (SFTConfig plus the wit_* keys), got {type(args).__name__}")
        weights = check_options(args)  # again: the config may have been edited since it was built
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(f"compute_loss_func: {name} installs the weighted loss itself")
        if kwargs.get("formatting_func") is not None:
            raise ValueError("formatting_func: formatted text has no roles; pass the rows, or build a 'text' column")
        if kwargs.get("train_dataset") is not None:  # vision rows skip _prepare_dataset: check them here
            check_row(next(iter(kwargs["train_dataset"])))
        self.wit_weights = weights.ever  # read by _prepare_dataset (SFTTrainer.__init__ calls it): roles ever trained
        self._wit_dropped: dict[str, dict[str, int | None]] = {}  # filled by _prepare_dataset (wit_drop_unrendered)
        choose_packing_attention(model, args)
        super().__init__(model, args=args, **kwargs)
        check_packing_attention(self.model, args)
        if self.aux_loss_enabled:
            raise ValueError(
                "router_aux_loss_coef: the MoE load-balancing loss is not added to the WIT loss; set it to 0"
            )
        sharding = parameter_sharding(args.fsdp, args.deepspeed)
        install_wit(self, weights, args.wit_options, sharding, self._describe_run(model, kwargs))

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self._wit_batch is not None:  # stored by WITTrainerMixin.compute_loss, taken by the weighted loss
            self._wit_batch = None
            mro = type(self).__mro__
            own = [
                c.__name__
                for c in mro[mro.index(WITSFTMixin) + 1 : mro.index(LogitsSFTTrainer)]
                if "compute_loss" in vars(c) and c not in WITSFTMixin.__mro__
            ]
            raise RuntimeError(
                f"{type(self).__name__}: the loss was computed without the weighted loss; "
                f"{' or '.join(f'{name}.compute_loss' for name in own) or 'every compute_loss'} must call "
                "super().compute_loss"
            )
        return result

    def _describe_run(self, model: Any, kwargs: dict[str, Any]) -> RunDescription:
        """This run, for its record (``wit_run.json``): TRL datasets are objects, named by their fingerprint."""
        datasets = []
        for name in ("train_dataset", "eval_dataset"):
            dataset = kwargs.get(name)
            if dataset is not None and not isinstance(dataset, dict):
                datasets.append({"name": name, "fingerprint": getattr(dataset, "_fingerprint", None)})
        base = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
        tagging = {
            "format": None,
            "options": {"field": self.args.dataset_text_field},
            "max_length": self.args.max_length,
        }
        extra = {
            "adapter": "lora" if getattr(self.model, "peft_config", None) else None,
            "seed": self.args.seed,
            "dropped_unrendered": [{"dataset": name, **counts} for name, counts in self._wit_dropped.items()],
        }
        return RunDescription("trl", base, datasets, [tagging], extra)

    def _prepare_dataset(
        self,
        dataset: AnyDataset,
        processing_class: Any,
        args: WITConfig,
        packing: bool,
        formatting_func: Any,
        dataset_name: str,
    ) -> AnyDataset:
        return prepare_dataset(
            dataset, self._tokenizer, args, self.wit_weights, packing, dataset_name, dropped=self._wit_dropped
        )


def add_logits_loss(cls: type) -> None:
    """Make ``cls`` (a subclass of :class:`WITSFTMixin`) compute its loss through :class:`LogitsSFTTrainer`,
    putting it in the bases when missing (in place of ``SFTTrainer`` when that is a base, else last), so it stands
    between the user's classes and ``SFTTrainer``; refuse
    a class where the mixin would not run first, or would silently replace one of the user's hooks."""
    mro = cls.__mro__
    if not issubclass(cls, SFTTrainer):
        raise TypeError(
            f"{cls.__name__}: WITSFTMixin mixes into a subclass of trl's SFTTrainer, "
            f"e.g. class {cls.__name__}(WITSFTMixin, MySFTTrainer); its bases are "
            f"{', '.join(base.__name__ for base in cls.__bases__)}"
        )
    mixin = mro.index(WITSFTMixin)
    first = next(i for i, base in enumerate(mro) if issubclass(base, SFTTrainer) and not issubclass(base, WITSFTMixin))
    if first < mixin:
        raise TypeError(
            f"{cls.__name__}: WITSFTMixin must come before {mro[first].__name__} in the bases, "
            f"class {cls.__name__}(WITSFTMixin, {mro[first].__name__}): after it, TRL's loss and dataset "
            "preparation run instead of WIT's"
        )
    own = [base for base in mro[mixin + 1 : mro.index(SFTTrainer)] if "_prepare_dataset" in vars(base)]
    if own:
        raise TypeError(
            f"{cls.__name__}: {own[0].__name__}._prepare_dataset would never run: WITSFTMixin prepares the "
            "datasets itself, so that roles survive tokenisation and packing; prepare the rows before passing them"
        )
    if LogitsSFTTrainer not in mro:
        # SFTTrainer itself among the bases (class T(WITSFTMixin, SFTTrainer)) is replaced: appending its subclass
        # after it has no consistent MRO. Otherwise appended: after the user's classes, above SFTTrainer.
        bases = cls.__bases__
        cls.__bases__ = (
            tuple(LogitsSFTTrainer if base is SFTTrainer else base for base in bases)
            if SFTTrainer in bases
            else (*bases, LogitsSFTTrainer)
        )
        LOG.info("wit: %s computes its loss through LogitsSFTTrainer (the weighted loss on the logits)", cls.__name__)


class WITSFTTrainer(WITSFTMixin, LogitsSFTTrainer):
    """``SFTTrainer`` with Weighted Instruction Tuning: L = Σ w(role)·CE / N, configured by :class:`WITConfig`.

    Takes SFTTrainer's arguments; ``compute_loss_func`` and ``formatting_func`` are refused (see
    :class:`WITSFTMixin`, for a trainer class of your own).
    """


def packing_keys(args: WITConfig) -> str | None:
    """The options under which rows share one sequence (``packing``, ``eval_packing``, ``padding_free``)."""
    keys = [key for key in ("packing", "eval_packing", "padding_free") if getattr(args, key, None)]
    return ", ".join(f"{key}=True" for key in keys) or None


def choose_packing_attention(model: Any, args: WITConfig) -> None:
    """With packed rows, a model TRL loads from a name gets an attention that keeps them apart, when the user
    named none (checked once loaded, by :func:`check_packing_attention`)."""
    from wit_plugin.packing import default_attention, log_choice

    packing = packing_keys(args)
    init_kwargs = dict(args.model_init_kwargs or {})
    if packing is None or not isinstance(model, str) or init_kwargs.get("attn_implementation") is not None:
        return
    half = bool(args.bf16 or args.fp16) or init_kwargs.get("dtype") in ("bfloat16", "float16")
    init_kwargs["attn_implementation"] = default_attention(on_cpu=bool(args.use_cpu), half_precision=half)
    args.model_init_kwargs = init_kwargs
    log_choice(init_kwargs["attn_implementation"], packing)


def check_packing_attention(model: Any, args: WITConfig) -> None:
    """With packed rows, refuse a model whose attention cannot keep them apart (no mask builder: a custom
    attention function); hub kernels are known only once the model is loaded, hence after TRL loads it."""
    from wit_plugin.compat import transformers_isolates_packed_rows
    from wit_plugin.packing import ISOLATING_CHOICES, PackingAttentionError

    packing = packing_keys(args)
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if packing is not None and not transformers_isolates_packed_rows(implementation):
        raise PackingAttentionError(
            f"WITSFTTrainer: {packing} with the model's attn_implementation={implementation!r}: packed sequences "
            f"would attend to each other. Load the model with attn_implementation set to {ISOLATING_CHOICES} "
            "(model_init_kwargs when TRL loads it), or turn packing off"
        )
