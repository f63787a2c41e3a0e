"""The GPU check's CPU dry run: every check reported, the CUDA parts skipped with a reason, the rest comparing numbers.

``bench/gpu_check.py`` is the one prepared command for a GPU machine; running it here on every CI run keeps it from
drifting away from the code it checks (the loss functions, WITSFTTrainer, bench/loss.py's interface).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKS = {
    "install",
    "loss_equality/smollm2/chunked",
    "loss_equality/smollm2/cce",
    "loss_equality/llama3-8b/chunked",
    "loss_equality/llama3-8b/cce",
    "train_step/fp32/chunked",
    "train_step/bf16/chunked",
    "train_step/bf16/cce",
    "bench_smoke",
    "bench_loss/smollm2",
    "bench_loss/llama3-8b",
}
RAN_ON_CPU = {"loss_equality/smollm2/chunked", "train_step/fp32/chunked", "bench_smoke"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("OUT", None)
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--install", "no", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return done, json.loads((out / "gpu_check.json").read_text()), out


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def test_every_check_is_reported_passed_or_skipped_with_a_reason(dry_run: tuple) -> None:
    _, report, _ = dry_run
    found = checks(report)
    assert set(found) == CHECKS
    assert report["mode"] == "cpu-dry-run"
    for name, check in found.items():
        assert check["status"] in ("passed", "skipped"), (name, check["reason"])
        if check["status"] == "skipped":
            assert check["reason"], name
        assert check["seconds"] >= 0 and check["budget_s"] > 0, name
    for name in RAN_ON_CPU:
        assert found[name]["status"] == "passed", name
    for name in CHECKS - RAN_ON_CPU - {"install"}:
        assert "CUDA" in found[name]["reason"], (name, found[name]["reason"])
    assert report["summary"] == {"passed": len(RAN_ON_CPU), "failed": 0, "skipped": len(CHECKS) - len(RAN_ON_CPU)}


def test_chunked_loss_was_compared_with_eager_and_a_float64_reference(dry_run: tuple) -> None:
    figures = checks(dry_run[1])["loss_equality/smollm2/chunked"]["figures"]
    assert figures["reference_dtype"] == "float64" and figures["dtype"] == "float32"
    assert (figures["hidden"], figures["vocab"]) == (576, 49_152)  # SmolLM2's head
    assert figures["pad_targets"] > 0 and figures["zero_weight_targets"] > 0 and figures["weighted_targets"] > 0
    for name in ("loss", "grad_hidden", "grad_head"):
        entry = figures[name]
        assert 0 <= entry["chunked_vs_eager_max_abs_diff"] < 1e-5, (name, entry)
        assert 0 <= entry["chunked_vs_reference_rel_err"] <= entry["tolerance"] <= 1e-5, (name, entry)
        assert entry["eager_vs_reference_rel_err"] < 1e-5, (name, entry)
    assert figures["loss"]["chunked"] == pytest.approx(figures["loss"]["reference"], rel=1e-6)
    stats = figures["role_stats"]
    assert stats["tokens_equal"] and stats["loss_sum_max_rel_diff"] <= stats["tolerance"]
    assert {"template", "system", "instruction", "response", "eot"} <= set(stats["tokens"])


def test_packed_step_equals_unpacked_step(dry_run: tuple) -> None:
    figures = checks(dry_run[1])["train_step/fp32/chunked"]["figures"]
    packed, unpacked = figures["packed"], figures["unpacked"]
    assert packed["batch_shape"][0] == 1 and packed["has_position_ids"] and not packed["has_attention_mask"]
    assert packed["sequences"] == unpacked["batch_shape"][0] == figures["rows"]
    assert packed["loss_impl"] == unpacked["loss_impl"] == "chunked"
    comparison = figures["comparison"]
    assert comparison["loss_rel_diff"] <= 1e-5 and comparison["grad_norm_rel_diff"] <= 1e-4
    assert comparison["role_loss_max_rel_diff"] <= 1e-4
    assert packed["log"]["loss"] > 0 and packed["log"]["grad_norm"] > 0
    for role in ("system", "instruction", "response", "eot"):
        assert packed["log"][f"wit/tokens_{role}"] == unpacked["log"][f"wit/tokens_{role}"] > 0, role


def test_summary_and_log(dry_run: tuple) -> None:
    done, report, out = dry_run
    assert "check" in done.stdout and "status" in done.stdout
    assert f"{len(RAN_ON_CPU)} passed, 0 failed, {len(CHECKS) - len(RAN_ON_CPU)} skipped" in done.stdout
    log = (out / "gpu_check.log").read_text()
    assert "=== loss_equality/smollm2/chunked" in log and "passed" in log
    assert report["environment"]["device"] == "cpu" and report["environment"]["versions"]["torch"]
    bench = checks(report)["bench_smoke"]["figures"]["cases"]
    assert {"hf_ce", "eager", "chunked", "chunked_it"} <= set(bench)


def load_gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("wit_gpu_check", REPO / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


class FakeBench:
    """bench/loss.py's interface with scripted children: the CUDA benchmark's bookkeeping, without CUDA."""

    def __init__(self) -> None:
        self.SHAPES = {"smollm2": SimpleNamespace(name="SmolLM2-135M", hidden=576, vocab=49_152, tokens=4096)}
        self.CASES = {"hf_ce": ("(a) HF CE", None), "chunked": ("(d) chunked", None), "cce": ("(f) CCE", None)}
        self.calls: list[str] = []

    def fits(self, shape: Any, dtype: Any, device: str) -> bool:
        return True

    def spawn(self, case: str, shape_key: str, dtype: str, device: str, frozen_head: bool) -> dict[str, float]:
        self.calls.append(case)
        slower = 1.5 if len(self.calls) <= 2 else 1.0  # the first round is slower: the best round counts
        if case == "chunked" and len(self.calls) > 2:
            raise RuntimeError("chunked on smollm2 failed:\nCUDA error")
        time_s = {"hf_ce": 0.004, "chunked": 0.002}[case] * slower
        return {"time_s": time_s, "peak_bytes": {"hf_ce": 1000, "chunked": 200}[case] * 2**20}


def test_bench_figures_are_ratios_to_plain_ce() -> None:
    gpu_check = load_gpu_check()
    bench = FakeBench()
    result = gpu_check.check_bench(bench, "smollm2", rounds=2, deadline_s=60.0)
    assert bench.calls == ["hf_ce", "chunked", "hf_ce", "chunked"]  # cce: not installed here
    assert (
        result.status == "failed" and "chunked" in result.reason and "CUDA error" in result.figures["errors"]["chunked"]
    )
    cases = result.figures["cases"]
    assert cases["hf_ce"]["time_ratio"] == 1.0
    assert cases["chunked"]["time_ratio"] == pytest.approx(0.003 / 0.004, rel=1e-3)  # best of rounds, each case
    assert cases["chunked"]["peak_ratio"] == pytest.approx(0.2)
    head_mib = 49_152 * 576 * 2 / 2**20
    assert cases["chunked"]["loss_ratio"] == pytest.approx((200 - head_mib) / (1000 - head_mib), rel=5e-3)
    record = {"name": "bench_loss/smollm2", "status": "passed", "figures": result.figures}
    assert "| SmolLM2-135M T=4096, bf16, CUDA | (d) chunked | 0.75× | 0.2× |" in gpu_check.readme_table([record])


def test_bench_starts_no_child_past_its_budget() -> None:
    result = load_gpu_check().check_bench(FakeBench(), "smollm2", rounds=2, deadline_s=0.0)
    assert result.status == "passed" and result.figures["not_run"] == ["chunked"]
    assert list(result.figures["cases"]) == ["hf_ce"] and result.figures["rounds"] == 0
