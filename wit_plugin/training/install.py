"""What wit_plugin adds to a trainer once it exists, the same for Axolotl and TRL: the weighted loss (and the
loss implementation the parameter sharding allows), the evaluation callbacks the ``wit_posix_*`` /
``wit_crosstask_*`` options ask for, and the callback writing the run record. Each adapter passes only what
differs: its options, its sharding and how it describes its run (:class:`RunDescription`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wit_plugin import options
from wit_plugin.evaluation.callback import evaluation_callbacks
from wit_plugin.roles import RoleSchedules, RoleWeights
from wit_plugin.training.mixin import WITTrainerMixin, loss_impl_under
from wit_plugin.training.records import RunRecordCallback, run_record


@dataclass
class RunDescription:
    """What an adapter knows of its run that the trainer does not: written into ``wit_run.json``."""

    framework: str  # "axolotl", "trl"
    base_model: str | None
    datasets: list[dict[str, Any]]
    taggings: list[dict[str, Any]]  # how each training dataset is tagged, in order
    extra: dict[str, Any] = field(default_factory=dict)  # the framework's own fields (adapter, seed...)


def install_wit(
    trainer: WITTrainerMixin,
    weights: RoleWeights | RoleSchedules,
    values: Mapping[str, Any],
    sharding: str | None,
    run: RunDescription,
) -> None:
    """Set up ``trainer`` (a WIT trainer, its model not yet wrapped) with the ``wit_*`` ``values`` (unset: None
    or absent), which the adapter has checked, under ``sharding`` (:func:`.mixin.parameter_sharding`)."""
    loss_impl = loss_impl_under(options.resolved(values, "wit_loss_impl"), sharding)
    trainer.setup_wit(
        weights,
        loss_impl=loss_impl,
        role_metrics=options.resolved(values, "wit_role_metrics"),
        normalize=options.resolved(values, "wit_normalize"),
    )
    for callback in evaluation_callbacks(values):
        trainer.add_callback(callback)  # type: ignore[attr-defined]
    record = run_record(
        run.framework, weights, values, trainer.wit_loss_impl, run.base_model, run.datasets, run.taggings, **run.extra
    )
    trainer.add_callback(RunRecordCallback(record))  # type: ignore[attr-defined]
