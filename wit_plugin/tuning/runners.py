"""One trial's training: the user's set-up with the trial's weights, into the trial's run folder.

* :class:`AxolotlRunner`: the trial's whole config (the user's YAML, the trial's ``wit_*`` weights, its
  ``output_dir``) is written to ``<run>/config.yml`` and trained by ``accelerate launch -m axolotl.cli.train``
  under this interpreter, in a subprocess (a crash stays there; its output goes to ``<run>/train.log``). The
  pruning callback joins through :mod:`.axolotl_plugin`, added to the config's ``plugins``: it does nothing
  outside a tuning.
* :class:`TrlRunner`: a function building a trainer from a ``WITConfig`` (the user's config with the trial's
  weights and ``output_dir``, recorded whole as ``<run>/wit_config.json``), trained in this process.

Weights are always written as floats: a weight whose config value was an integer (``wit_prompt_weight: 0``)
gets the trial's 0.37, never 0.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pruning imports transformers: loaded by a trial, not before `wit tune` has checked its inputs
    from wit_plugin.tuning.pruning import TrialLink

WIT_PLUGIN = "wit_plugin.WITPlugin"
TUNE_PLUGIN = "wit_plugin.tuning.axolotl_plugin.TunePlugin"
CONFIG_FILE = "config.yml"  # Axolotl's trial config
TRL_CONFIG_FILE = "wit_config.json"  # a TRL trial's WITConfig (config.json is the model's, saved beside it)
LOG_FILE = "train.log"


class TrialError(RuntimeError):
    """A trial's training failed; the message says why and where its log is."""


@dataclass
class Outcome:
    pruned: dict[str, Any] | None  # {"step", "value"} when the pruner stopped the run
    steps: int | None  # optimiser steps trained


def _record(folder: Path) -> dict[str, Any]:
    """The run's ``wit_run.json`` as written so far (empty if the training wrote none)."""
    from wit_plugin.training.records import RUN_FILE

    path = folder / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def with_weights(values: Mapping[str, Any], weights: Mapping[str, float]) -> dict[str, Any]:
    """``values`` with the trial's weights, as floats."""
    return {**values, **{key: float(value) for key, value in weights.items()}}


def _error_lines(log_file: Path, lines: int = 3) -> str:
    """The last lines of a failed run's log that name an error (else its last lines)."""
    text = log_file.read_text(encoding="utf-8", errors="replace").splitlines() if log_file.is_file() else []
    errors = [line.strip() for line in text if "Error" in line or "error:" in line]
    return " | ".join((errors or [line.strip() for line in text if line.strip()])[-lines:])


class AxolotlRunner:
    framework = "axolotl"

    def __init__(self, config: Path, cwd: Path | None = None, python: str = sys.executable) -> None:
        import yaml

        self.path, self.cwd, self.python = Path(config), Path(cwd or Path.cwd()), python
        if not self.path.is_file():
            raise FileNotFoundError(f"no Axolotl config at {self.path}")
        try:
            self.config = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ValueError(f"{self.path}: not valid YAML ({error})") from None
        if not isinstance(self.config, dict):
            raise ValueError(f"{self.path}: an Axolotl config is a YAML mapping")  # noqa: TRY004 - bad input
        plugins = self.config.get("plugins") or []
        if WIT_PLUGIN not in plugins:
            raise ValueError(f"{self.path}: `plugins` lacks {WIT_PLUGIN}: its runs would not train with role weights")

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def wit_values(self) -> Mapping[str, Any]:
        """The option values the user's set-up gives (before the trial's weights)."""
        return self.config

    def wit_keys(self, weights: Mapping[str, float]) -> dict[str, Any]:
        """The trial's ``wit_*`` keys: the config's, with the trial's weights."""
        return with_weights({k: v for k, v in self.config.items() if str(k).startswith("wit_")}, weights)

    def trial_config(self, weights: Mapping[str, float], folder: Path) -> dict[str, Any]:
        config = with_weights(copy.deepcopy(self.config), weights)
        config["output_dir"] = str(folder)
        config["plugins"] = [*config["plugins"], TUNE_PLUGIN]
        return config

    def train(self, weights: Mapping[str, float], folder: Path, link: TrialLink, trial: Any) -> Outcome:
        import yaml

        from wit_plugin.training.records import RUN_FILE, pruned_step
        from wit_plugin.tuning.pruning import STORAGE_ENV, TRIAL_ENV

        folder.mkdir(parents=True, exist_ok=True)
        config = folder / CONFIG_FILE
        config.write_text(yaml.safe_dump(self.trial_config(weights, folder), sort_keys=False), encoding="utf-8")
        env = {**os.environ, TRIAL_ENV: str(link.save(folder)), STORAGE_ENV: link.storage}
        # README's `accelerate launch -m axolotl.cli.train`, run by this interpreter (`axolotl train` would start
        # the first `accelerate` on PATH: another interpreter's, without this one's packages, in a venv that has none)
        command = [self.python, "-m", "accelerate.commands.launch", "-m", "axolotl.cli.train", str(config)]
        with open(folder / LOG_FILE, "w", encoding="utf-8") as log_file:
            done = subprocess.run(
                command, cwd=self.cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False
            )
        if done.returncode:
            raise TrialError(
                f"axolotl training exited with {done.returncode}: {_error_lines(folder / LOG_FILE)} "
                f"(log: {folder / LOG_FILE})"
            )
        record = _record(folder)
        if not record.get("finished"):  # Axolotl saves the model and exits 0 on an interrupt
            raise TrialError(
                f"axolotl training exited with 0 before its end (its {RUN_FILE} is not marked finished): "
                f"stopped early, e.g. interrupted; the saved model is not the trial's (log: {folder / LOG_FILE})"
            )
        return Outcome(pruned_step(folder), record.get("steps"))


class TrlRunner:
    """``build(config) -> trainer``: a WIT trainer (``WITSFTTrainer``) whose ``args`` is the config given."""

    framework = "trl"

    def __init__(self, build: Callable[[Any], Any], config: Any) -> None:
        from wit_plugin.integrations.trl import WITConfig

        if not isinstance(config, WITConfig):
            raise TypeError(f"tune_trl needs a WITConfig, got {type(config).__name__}")
        self.build, self.config = build, config

    where = "the WITConfig"

    @property
    def wit_values(self) -> Mapping[str, Any]:
        """The option values the user's set-up gives (before the trial's weights)."""
        return self.config.wit_options

    def wit_keys(self, weights: Mapping[str, float]) -> dict[str, Any]:
        from wit_plugin import options

        values = {name: value for name, value in self.config.wit_options.items() if value != options.defaults()[name]}
        return with_weights(values, weights)

    def train(self, weights: Mapping[str, float], folder: Path, link: TrialLink, trial: Any) -> Outcome:
        from wit_plugin.training.mixin import WITTrainerMixin
        from wit_plugin.training.records import pruned_step
        from wit_plugin.tuning.pruning import PruningCallback

        folder.mkdir(parents=True, exist_ok=True)
        config = dataclasses.replace(self.config, output_dir=str(folder), **with_weights({}, weights))
        (folder / TRL_CONFIG_FILE).write_text(config.to_json_string(), encoding="utf-8")
        trainer = self.build(config)
        try:
            if not isinstance(trainer, WITTrainerMixin):
                raise TrialError(f"the build function returned a {type(trainer).__name__}, not a WIT trainer")
            if trainer.args.output_dir != str(folder) or any(
                getattr(trainer.args, key) != float(value) for key, value in weights.items()
            ):
                raise TrialError("the build function must train with the WITConfig it is given (its `args`)")
            trainer.add_callback(PruningCallback(link, trial=trial))
            trainer.train()
            if pruned_step(folder) is None:  # a pruned run is not scored: no model to save
                trainer.save_model(str(folder))
        finally:
            del trainer
            gc.collect()
        return Outcome(pruned_step(folder), _record(folder).get("steps"))
