"""``plugins: [wit_plugin.WITPlugin]``: Weighted Instruction Tuning in Axolotl."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin

from wit_plugin.integrations.axolotl.args import WIT_KEYS
from wit_plugin.integrations.axolotl.strategies import MODULE_FORMATS, STOCK_TYPE_MODULES, truncates
from wit_plugin.roles import RoleWeights

LOG = logging.getLogger(__name__)

STRATEGIES = "wit_plugin.integrations.axolotl.strategies"
STOCK_TYPES = {stock: f"{STRATEGIES}.{module}" for stock, module in STOCK_TYPE_MODULES.items()}
OWN_TYPES = frozenset(f"{STRATEGIES}.{module}" for module in MODULE_FORMATS)
# Options that compute the loss their own way (and would bypass the role weights) or train something else.
CONFLICTS = {
    "rl": "RL/preference training (DPO, ORPO, KTO, GRPO...) has its own loss",
    "reward_model": "reward-model training has its own loss",
    "process_reward_model": "process-reward-model training has its own loss",
    "orpo_alpha": "ORPO has its own loss",
    "liger_fused_linear_cross_entropy": "Liger's fused linear cross-entropy bypasses the per-token weights",
    "liger_cross_entropy": "Liger's cross-entropy bypasses the per-token weights",
    "cut_cross_entropy": "cut_cross_entropy bypasses the per-token weights",
    "chunked_cross_entropy": "chunked_cross_entropy bypasses the per-token weights",
    "use_eaft": "EAFT replaces the loss function",
    "pretraining_dataset": "streaming pretraining datasets are not role-tagged; use a dataset with `type: completion`",
    "tokenizer_use_mistral_common": "mistral-common tokenizers give no offset mapping to tag roles with",
    "train_on_inputs": "the role weights decide what is trained: use `wit_preset: im` / `cpt` or `wit_prompt_weight`",
    "eot_tokens": "wit_plugin tags each turn's end itself (the first special token after an assistant content)",
    "trainer_cls": "wit_plugin installs its own trainer class, which a custom one would replace",
}
PARALLEL_CONFLICTS = {
    "context_parallel_size": "sequences split across ranks",
    "sequence_parallel_degree": "sequences split across ranks",
    "tensor_parallel_size": "the LM head and logits split across ranks",
}
FUSED_LOSSES = ("chunked", "cce")
AXOLOTL_SEQUENCE_LEN = 512  # Axolotl 0.19's default, not yet filled in when register() sees the config


class WITConfigError(ValueError):
    """The Axolotl config asks for something the WIT plugin cannot do correctly."""


def check_config(cfg: Any) -> None:
    """Fail on typos in ``wit_*`` keys and on options that would train with the wrong loss."""
    unknown = sorted(key for key in cfg if str(key).startswith("wit_") and key not in WIT_KEYS)
    if unknown:
        raise WITConfigError(f"unknown wit_plugin option(s) {unknown}; valid: {sorted(WIT_KEYS)}")
    RoleWeights.from_options(cfg)
    problems = [f"`{key}`: {why}" for key, why in CONFLICTS.items() if cfg.get(key)]
    problems += [f"`{key}` > 1: {why}" for key, why in PARALLEL_CONFLICTS.items() if (cfg.get(key) or 1) > 1]
    sharding = parameter_sharding(cfg)
    if sharding and cfg.get("wit_loss_impl") in FUSED_LOSSES:
        problems.append(
            f"`wit_loss_impl: {cfg.get('wit_loss_impl')}` with {sharding}: the fused loss needs the whole LM head "
            "weight; use `eager` (or `auto`, which picks it)"
        )
    eval_len = cfg.get("eval_sequence_len")
    if truncates(cfg) and eval_len and eval_len != (cfg.get("sequence_len") or AXOLOTL_SEQUENCE_LEN):
        problems.append(
            "`excess_length_strategy: truncate` with an `eval_sequence_len` of its own: the role column is cut at "
            "`sequence_len`, and Axolotl would cut the eval split's other columns elsewhere"
        )
    if "tools" in (cfg.get("chat_template_kwargs") or {}):
        problems.append("`chat_template_kwargs.tools`: tool definitions would be weighted as template text")
    posix_options = [key for key in ("wit_posix_steps", "wit_posix_max_new_tokens") if cfg.get(key) is not None]
    if posix_options and not cfg.get("wit_posix_prompts"):
        problems.append(f"{posix_options} set without `wit_posix_prompts`: no POSIX would be computed")
    if cfg.get("wit_posix_prompts") and not Path(cfg["wit_posix_prompts"]).is_file():
        problems.append(f"`wit_posix_prompts`: no file at {cfg['wit_posix_prompts']}")
    problems += [
        f"plugin `{name}` replaces the loss and bypasses the per-token weights"
        for name in cfg.get("plugins") or []
        if "cut_cross_entropy" in name or "liger" in name.lower()
    ]
    if problems:
        raise WITConfigError("wit_plugin cannot train with:\n  - " + "\n  - ".join(problems))


def parameter_sharding(cfg: Any) -> str | None:
    """FSDP or DeepSpeed ZeRO-3, which shard parameters (the LM head weight included) across ranks."""
    if cfg.get("fsdp_config") or cfg.get("fsdp"):
        return "FSDP"
    deepspeed = cfg.get("deepspeed")
    if isinstance(deepspeed, (str, Path)) and Path(deepspeed).is_file():
        deepspeed = json.loads(Path(deepspeed).read_text())
    if isinstance(deepspeed, dict) and (deepspeed.get("zero_optimization") or {}).get("stage") == 3:
        return "DeepSpeed ZeRO-3"
    return None


def map_dataset_types(cfg: Any) -> None:
    """Point every dataset at its role-tagging strategy; anything we cannot tag is an error."""
    for key in ("datasets", "test_datasets"):
        for dataset in cfg.get(key) or []:
            kind = dataset.get("type") or "chat_template"  # Axolotl's default for messages datasets
            if not isinstance(kind, str):
                raise WITConfigError(f"{key}: custom dataset type definitions cannot be role-tagged: {kind!r}")
            if kind in OWN_TYPES:
                continue
            if kind not in STOCK_TYPES:
                raise WITConfigError(
                    f"{key}: dataset type {kind!r} cannot be role-tagged by wit_plugin; supported: "
                    f"{sorted(STOCK_TYPES)} or {sorted(OWN_TYPES)}"
                )
            dataset["type"] = STOCK_TYPES[kind]


class WITPlugin(BasePlugin):
    """Weighted Instruction Tuning: per-role token weights in the SFT loss."""

    def register(self, cfg: dict) -> None:
        check_config(cfg)
        map_dataset_types(cfg)
        LOG.info("wit_plugin: role weights %s", RoleWeights.from_options(cfg).describe())

    def get_input_args(self) -> str:
        return "wit_plugin.integrations.axolotl.args.WITArgs"

    def get_training_args(self, cfg: Any) -> dict[str, Any]:
        # N must count weighted tokens on every rank (Axolotl turns this off by default).
        return {"average_tokens_across_devices": True}

    def get_trainer_cls(self, cfg: Any) -> type:
        from axolotl.integrations.base import PluginManager

        from wit_plugin.integrations.axolotl.trainer import AxolotlWITTrainer

        others = [
            name
            for name, plugin in PluginManager.get_instance().plugins.items()
            if plugin is not self and plugin.get_trainer_cls(cfg) is not None
        ]
        if others:  # Axolotl takes the first plugin's class: one of the two trainers would be silently dropped
            raise WITConfigError(f"plugins {others} bring their own trainer class; wit_plugin cannot train with them")
        return AxolotlWITTrainer

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list:
        from wit_plugin.evaluation.callback import posix_callback_from_options

        callback = posix_callback_from_options(cfg)
        return [callback] if callback is not None else []

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        from wit_plugin.trainer import WITTrainerMixin

        if not isinstance(trainer, WITTrainerMixin):
            raise WITConfigError(
                f"the trainer is a {type(trainer).__name__}, not wit_plugin's: another plugin chose the trainer "
                "class, so the role weights would not be applied"
            )
        loss_impl, sharding = cfg.wit_loss_impl or "auto", parameter_sharding(cfg)
        if loss_impl == "auto" and sharding:
            LOG.info("wit_plugin: %s shards the LM head, so the loss is computed eagerly", sharding)
            loss_impl = "eager"
        trainer.setup_wit(
            RoleWeights.from_options(cfg), loss_impl=loss_impl, role_metrics=cfg.wit_role_metrics or "all"
        )
