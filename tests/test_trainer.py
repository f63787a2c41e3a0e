"""The trainer's normalisation: gradient accumulation and data parallelism give the one-batch gradient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer_case import one_step


def assert_same_step(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for name in a["updates"]:
        torch.testing.assert_close(
            torch.tensor(a["updates"][name]), torch.tensor(b["updates"][name]), rtol=1e-4, atol=atol
        )


@pytest.fixture(scope="module")
def one_batch(model_path, tmp_path_factory):
    return one_step(str(model_path), str(tmp_path_factory.mktemp("one")), batch_size=2, accumulation=1)


def test_gradient_accumulation_equals_one_batch(model_path, tmp_path, one_batch):
    accumulated = one_step(str(model_path), str(tmp_path), batch_size=1, accumulation=2)
    assert_same_step(accumulated, one_batch)
    assert "wit/loss_response" in accumulated["log"] and accumulated["log"]["wit/tokens_eot"] == 2


def test_fused_chunked_loss_gives_the_eager_step(model_path, tmp_path, one_batch):
    chunked = one_step(str(model_path), str(tmp_path), batch_size=2, accumulation=1, loss_impl="chunked")
    # the tied embedding's gradient sums the LM head's in another order: fp32 round-off up to a few 1e-6
    assert_same_step(chunked, one_batch, atol=1e-5)
    # role metrics of zero-weight roles are computed too (forward only) and match the eager ones
    for key in ("wit/loss_template", "wit/loss_instruction", "wit/loss_response", "wit/tokens_template"):
        assert chunked["log"][key] == pytest.approx(one_batch["log"][key], rel=1e-4)


def test_fused_loss_under_bf16_mixed_precision_gives_the_eager_step(model_path, tmp_path):
    # Accelerate hands the loss fp32 hidden states from a bf16 model: the fused loss takes them back to bf16
    eager = one_step(str(model_path), str(tmp_path / "eager"), batch_size=2, accumulation=1, bf16=True)
    chunked = one_step(str(model_path), str(tmp_path / "chunked"), 2, 1, loss_impl="chunked", bf16=True)
    assert chunked["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    for name in eager["updates"]:
        update, reference = torch.tensor(chunked["updates"][name]), torch.tensor(eager["updates"][name])
        # bf16 parameters: an update is the difference of two bf16 values, so the gradients' last-bit
        # differences flip a few elements by one bf16 step; nearly all are identical
        assert reference.norm() > 0 and (update != reference).float().mean() < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("loss_impl", ["eager", "chunked"])
def test_two_gloo_processes_equal_one_process(model_path, tmp_path, one_batch, loss_impl):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "tests/trainer_case.py",
        str(model_path),
        str(out),
        loss_impl,
    ]
    subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert_same_step(json.loads(out.read_text()), one_batch, atol=1e-5)
