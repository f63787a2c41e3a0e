"""Shared fixtures: the real SmolLM2-135M-Instruct (converted once), its tokenizer, offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WIT_CACHE", str(REPO / ".wit_cache"))
for key, value in {"HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)


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
