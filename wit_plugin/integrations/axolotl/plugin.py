"""``plugins: [wit_plugin.WITPlugin]``: Weighted Instruction Tuning in Axolotl."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl.integrations.base import BasePlugin

from wit_plugin import options
from wit_plugin.compat import axolotl_context_parallel_sizes, axolotl_sequence_len
from wit_plugin.integrations.axolotl.dataset_types import (
    DROP_SUFFIX,
    WITConfigError,
    map_dataset_types,
    tagging_record,
    truncates,
)
from wit_plugin.jsonl import check_jsonl
from wit_plugin.roles import RoleSchedules, WeightError
from wit_plugin.tagging import TAGGING_VERSION

if TYPE_CHECKING:
    from wit_plugin.training.install import RunDescription

LOG = logging.getLogger(__name__)

AXOLOTL_PREPARED_PATH = "last_run_prepared"  # Axolotl's default dataset_prepared_path
PREPARED_FOLDER = f"wit_tagging_v{TAGGING_VERSION}"


def version_prepared_path(cfg: Any) -> None:
    """Prepared datasets go to ``<dataset_prepared_path>/wit_tagging_v<N>/<hash>``: a dataset tagged by an older
    tagger (fewer roles, other ends of turn) is never reused, whatever Axolotl's hash covers."""
    path = Path(cfg.get("dataset_prepared_path") or AXOLOTL_PREPARED_PATH)
    if path.name != PREPARED_FOLDER:
        cfg["dataset_prepared_path"] = str(path / PREPARED_FOLDER)


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
    "use_dft": "DFT replaces the loss function (its compute_loss_func would be silently replaced by WIT's)",
    "diffusion_lm": "diffusion LM training has its own trainer and objective",
    "balance_labels": "label balancing bins rows by their `labels` count, which the role weights do not follow",
    "pretraining_dataset": "streaming pretraining datasets are not role-tagged; use a dataset with `type: completion`",
    "tokenizer_use_mistral_common": "mistral-common tokenizers give no offset mapping to tag roles with",
    "train_on_inputs": "the role weights decide what is trained: use `wit_preset: im` / `cpt` or `wit_prompt_weight`",
    "trainer_cls": "wit_plugin installs its own trainer class, which a custom one would replace",
}
PARALLEL_CONFLICTS = {"tensor_parallel_size": "the LM head and logits split across ranks"}


def check_config(cfg: Any) -> None:
    """Fail on typos in ``wit_*`` keys and on options that would train with the wrong loss."""
    from wit_plugin.training.mixin import check_fused_loss

    options.check_known_keys(cfg)
    options.check_values(cfg)
    options.check_weights(cfg)
    problems = [f"`{key}`: {why}" for key, why in CONFLICTS.items() if cfg.get(key)]
    problems += [f"`{key}` > 1: {why}" for key, why in PARALLEL_CONFLICTS.items() if (cfg.get(key) or 1) > 1]
    problems += [
        f"`{key}` > 1: sequences split across ranks"
        for key, size in axolotl_context_parallel_sizes(cfg).items()
        if size > 1
    ]
    try:
        check_fused_loss(options.resolved(cfg, "wit_loss_impl"), config_sharding(cfg))
    except ValueError as error:
        problems.append(str(error))
    eval_len = cfg.get("eval_sequence_len")
    if truncates(cfg) and eval_len and eval_len != axolotl_sequence_len(cfg):
        problems.append(
            "`excess_length_strategy: truncate` with an `eval_sequence_len` of its own: the role column is cut at "
            "`sequence_len`, and Axolotl would cut the eval split's other columns elsewhere"
        )
    for check in (options.check_posix, options.check_crosstask):
        try:
            check(cfg)
        except options.OptionError as error:
            problems.append(str(error))
    problems += [
        f"plugin `{name}` replaces the loss and bypasses the per-token weights"
        for name in cfg.get("plugins") or []
        if "cut_cross_entropy" in name or "liger" in name.lower()
    ]
    problems += packing_attention_problems(cfg) + lora_kernel_problems(cfg)
    if problems:
        raise WITConfigError("wit_plugin cannot train with:\n  - " + "\n  - ".join(problems))


def packing_keys(cfg: Any) -> str | None:
    """The keys that pack rows (``sample_packing``, ``eval_sample_packing``), as the messages name them."""
    keys = [key for key in ("sample_packing", "eval_sample_packing") if cfg.get(key)]
    return " / ".join(f"`{key}: true`" for key in keys) or None


def packing_attention_problems(cfg: Any) -> list[str]:
    """An explicit attention implementation under which packed rows would see each other."""
    from wit_plugin.compat import axolotl_attention, axolotl_isolates_packed_rows
    from wit_plugin.packing import ISOLATING_CHOICES

    packing = packing_keys(cfg)
    key, implementation = axolotl_attention(cfg)
    if packing is None or implementation is None or axolotl_isolates_packed_rows(implementation):
        return []
    why = (
        f"{packing} with `{key}` ({implementation}): Axolotl passes the packed rows' sequence numbers as an "
        "attention mask that transformers reads as padding, so every packed sequence attends to the ones before "
        f"it; set `attn_implementation` to {ISOLATING_CHOICES} (and remove `{key}`), or turn packing off"
    )
    return [why]


def choose_packing_attention(cfg: Any) -> None:
    """Under packing with no attention key, pick one that keeps packed rows apart (Axolotl would otherwise keep
    its sequence-number mask, which transformers reads as padding: the rows would attend to each other)."""
    from wit_plugin.compat import axolotl_attention
    from wit_plugin.packing import default_attention, log_choice

    packing = packing_keys(cfg)
    if packing is None or axolotl_attention(cfg)[1] is not None:
        return
    half = cfg.get("bf16") in (True, "auto") or bool(cfg.get("fp16"))
    cfg["attn_implementation"] = default_attention(on_cpu=_on_cpu(cfg), half_precision=half)
    log_choice(cfg["attn_implementation"], packing)


LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def _on_cpu(cfg: Any) -> bool:
    import torch

    return bool(cfg.get("use_cpu")) or not torch.cuda.is_available()


def _lora(cfg: Any) -> bool:
    return cfg.get("adapter") in ("lora", "qlora")


def lora_kernel_problems(cfg: Any) -> list[str]:
    """Axolotl's fused LoRA kernels are Triton (CUDA) kernels: on CPU they fail at the first step."""
    explicit = [key for key in LORA_KERNELS if cfg.get(key)]
    if not explicit or not _lora(cfg) or not _on_cpu(cfg):
        return []
    keys = ", ".join(f"`{key}`" for key in explicit)
    return [f"{keys}: Axolotl's fused LoRA kernels need CUDA, and this run is on the CPU; set them to false"]


def disable_lora_kernels_on_cpu(cfg: Any) -> None:
    """Axolotl 0.19 and 0.21 turn on every ``lora_*_kernel`` for a LoRA run that sets none of them, CUDA or not;
    on CPU they crash (``Torch not compiled with CUDA enabled``), so unset ones are set false here."""
    unset = [key for key in LORA_KERNELS if cfg.get(key) is None]
    if not unset or not _lora(cfg) or not _on_cpu(cfg):
        return
    for key in unset:
        cfg[key] = False
    LOG.warning("wit: no CUDA for Axolotl's fused LoRA kernels: %s set to false", ", ".join(unset))


def config_sharding(cfg: Any) -> str | None:
    from wit_plugin.training.mixin import parameter_sharding

    return parameter_sharding(cfg.get("fsdp_config") or cfg.get("fsdp"), cfg.get("deepspeed"))


def check_dataset_files(cfg: Any) -> None:
    """Every local JSON Lines dataset parses, or the error names its file and line (``datasets`` itself reports
    only that generation failed)."""
    if int(os.environ.get("RANK", "0")) != 0:  # every rank registers the plugin; one check is enough
        return
    for key in ("datasets", "test_datasets"):
        for dataset in cfg.get(key) or []:
            data_files = dataset.get("data_files") or []
            files = [dataset.get("path"), *([data_files] if isinstance(data_files, str) else data_files)]
            for path in files:
                if isinstance(path, str) and path.endswith((".jsonl", ".json")) and Path(path).is_file():
                    check_jsonl(path) if path.endswith(".jsonl") else _check_json(path)


def _check_json(path: str) -> None:
    """A ``.json`` dataset is one JSON document, or JSON Lines under another name."""
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        check_jsonl(path)


@contextmanager
def config_file_named(path: str | None) -> Iterator[None]:
    """A config error names the YAML file it is in: Axolotl prints it under a traceback that does not."""
    try:
        yield
    except (options.OptionError, WeightError, WITConfigError) as error:
        if path and error.args:
            error.args = (f"config {path}: {error.args[0]}", *error.args[1:])
        raise


class WITPlugin(BasePlugin):
    """Weighted Instruction Tuning: per-role token weights in the SFT loss."""

    def register(self, cfg: dict) -> None:
        with config_file_named(cfg.get("axolotl_config_path")):
            check_config(cfg)
            choose_packing_attention(cfg)
            disable_lora_kernels_on_cpu(cfg)
            map_dataset_types(cfg)
        version_prepared_path(cfg)
        check_dataset_files(cfg)
        LOG.info("wit_plugin: role weights %s", RoleSchedules.from_options(cfg).describe())

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

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        from wit_plugin.training.install import install_wit
        from wit_plugin.training.mixin import WITTrainerMixin

        if not isinstance(trainer, WITTrainerMixin):
            raise WITConfigError(
                f"the trainer is a {type(trainer).__name__}, not wit_plugin's: another plugin chose the trainer "
                "class, so the role weights would not be applied"
            )
        dropped = dropped_unrendered(cfg, trainer.train_dataset, trainer.eval_dataset)
        values = {key: cfg.get(key) for key in options.OPTION_BY_NAME}
        install_wit(
            trainer, RoleSchedules.from_options(cfg), values, config_sharding(cfg), describe_run(cfg, trainer, dropped)
        )
        audit_datasets(trainer, cfg, dropped)


def dropped_unrendered(cfg: Any, train_dataset: Any, eval_dataset: Any) -> list[dict[str, Any]]:
    """For each dataset that opted in to ``wit_drop_unrendered``, the fields dropped from its rows, by kind, in
    the prepared train and eval datasets: summed from their ``wit_dropped`` column, so exact whether the rows were
    tagged in worker processes (``dataset_num_proc`` > 1) or loaded from a prepared cache and not tagged at all
    (see :mod:`wit_plugin.tagging.dropped`). Counts are ``None`` for a streamed dataset (tagged while training)."""
    from wit_plugin.tagging.dropped import DROP_KINDS, UNKNOWN_DATASET, no_drops, sum_dropped

    tests = bool(cfg.get("test_datasets"))  # then the eval rows are theirs, else a split of the training rows
    sources = {"datasets": [train_dataset] if tests else [train_dataset, eval_dataset], "test_datasets": [eval_dataset]}
    entries: list[dict[str, Any]] = []
    for key, prepared in sources.items():
        configured = cfg.get(key) or []
        opted = [index for index, dataset in enumerate(configured) if str(dataset.get("type")).endswith(DROP_SUFFIX)]
        if not opted:
            continue
        totals = sum_dropped(dataset for dataset in prepared if dataset is not None)
        if totals is None:
            entries += [{"dataset": f"{key}[{index}]", **dict.fromkeys(DROP_KINDS)} for index in opted]
            continue
        entries += [{"dataset": f"{key}[{index}]", **totals.get(index, no_drops())} for index in opted]
        if any(totals.get(UNKNOWN_DATASET, {}).values()):  # a strategy that could not find its entry in the config
            entries.append({"dataset": f"{key}[?]", **totals[UNKNOWN_DATASET]})
    return entries


def describe_run(cfg: Any, trainer: Any, dropped: list[dict[str, Any]]) -> RunDescription:
    """This Axolotl run, for its record (:mod:`wit_plugin.training.records`); ``dropped`` is
    :func:`dropped_unrendered`."""
    from wit_plugin.training.install import RunDescription

    datasets = cfg.get("datasets") or []
    return RunDescription(
        "axolotl",
        cfg.get("base_model"),
        [
            {key: entry.get(key) for key in ("path", "type", "split", "field_messages") if entry.get(key) is not None}
            for entry in datasets
        ],
        [tagging_record(trainer.processing_class, cfg, entry) for entry in datasets],
        {
            "adapter": cfg.get("adapter"),
            "sequence_len": cfg.get("sequence_len"),
            "seed": cfg.get("seed"),
            "chat_template": cfg.get("chat_template"),
            "dropped_unrendered": dropped,
        },
    )


def audit_datasets(trainer: Any, cfg: Any, dropped: list[dict[str, Any]]) -> None:
    """Warn once per dataset about assistant turns left without an end-of-turn token; log, per dataset that opted
    in, what ``wit_drop_unrendered`` dropped (``dropped``: :func:`dropped_unrendered`)."""
    from wit_plugin.roles import ROLES_KEY
    from wit_plugin.tagging.audit import audit_turn_ends, dataset_roles
    from wit_plugin.tagging.dropped import describe

    if not trainer.is_world_process_zero():
        return
    for entry in dropped:
        counts = {kind: count for kind, count in entry.items() if kind != "dataset"}
        if None in counts.values():
            LOG.warning(
                "wit: %s: what the chat template does not render is dropped (wit_drop_unrendered) as the streamed "
                "rows are read; it cannot be counted before training",
                entry["dataset"],
            )
            continue
        LOG.log(
            logging.WARNING if any(counts.values()) else logging.INFO,
            "wit: %s: dropped what the chat template does not render (wit_drop_unrendered), in the prepared train "
            "and eval rows: %s",
            entry["dataset"],
            describe(counts),
        )
    for name, dataset in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        if dataset is not None and ROLES_KEY in (getattr(dataset, "column_names", None) or []):
            audit_turn_ends(dataset_roles(dataset, ROLES_KEY)).warn(name, cfg.get("chat_template"))
    warn_unused_weight_fields(cfg, trainer.train_dataset)


def warn_unused_weight_fields(cfg: Any, train_dataset: Any) -> None:
    """One warning per training dataset whose weight key the user named (not the default ``weight``) but whose
    prepared rows carry no weight other than 1 under it: the key is likely misspelt."""
    from datasets import Dataset

    from wit_plugin.integrations.axolotl.dataset_types import weight_field
    from wit_plugin.roles import MESSAGE_WEIGHTS_KEY
    from wit_plugin.tagging.audit import weighted_datasets
    from wit_plugin.tagging.dropped import DROPPED_KEY

    named = {index: weight_field(cfg, entry) for index, entry in enumerate(cfg.get("datasets") or [])}
    named = {index: field for index, field in named.items() if field != options.defaults()["wit_message_weight_field"]}
    if not named or not isinstance(train_dataset, Dataset):
        return
    weighted = weighted_datasets(train_dataset, MESSAGE_WEIGHTS_KEY, DROPPED_KEY)
    for index, field in named.items():
        if index not in weighted:
            LOG.warning(
                "wit: datasets[%d]: no row carries a weight other than 1 under %r (wit_message_weight_field): check "
                "the key's name (every token keeps its role weight)",
                index,
                field,
            )
