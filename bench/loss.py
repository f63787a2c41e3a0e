"""Forward+backward time and peak memory of the LM-head loss: materialised logits vs the fused weighted loss.

Every case runs in a fresh subprocess, so one case's freed memory cannot hide another's peak. On CPU the
peak is the process's resident-set high-water mark (reset once the inputs exist: torch's CPU allocations are
invisible to tracemalloc); on CUDA it is ``torch.cuda.max_memory_allocated``. Both are deltas over the
inputs (hidden states, LM head, ids), so they include the gradients the step leaves behind.

    python bench/loss.py                 # SmolLM2 head, then a Llama-3-8B head where memory allows
    python bench/loss.py --quick         # SmolLM2 head only
    python bench/loss.py --frozen-head   # the head is not trained (LoRA): no head gradient in any case
    python bench/loss.py --quick --cases eager,eager_msg,chunked,chunked_msg   # per-message weights (#18) beside

Cases ``*_msg`` pass per-token multipliers from the data (a message's weight: every third token 0.5, as a row
whose earlier turns are weighted down) on top of the role weights: their cost is the extra multiplication.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from harness import keep_best, ratios_to

from wit_plugin.loss.linear_ce import cce_available, weighted_linear_cross_entropy
from wit_plugin.loss.weighted import weighted_token_loss
from wit_plugin.roles import Role, RoleWeights

INSTRUCTION_SHARE = 0.6  # the first 60% of each row is instruction, the rest response


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    vocab: int
    tokens: int


SHAPES = {
    "smollm2": Shape("SmolLM2-135M", 576, 49_152, 4096),
    "llama3-8b": Shape("Llama-3-8B", 4096, 128_256, 2048),
}


@dataclass
class Inputs:
    hidden: torch.Tensor  # [1, T, H], requires grad
    weight: torch.Tensor  # [V, H], requires grad
    input_ids: torch.Tensor
    roles: torch.Tensor
    message_weights: torch.Tensor  # [1, T] float32 multipliers from the data (used by the *_msg cases only)


def make_inputs(shape: Shape, dtype: torch.dtype, device: str, frozen_head: bool = False) -> Inputs:
    """Generated directly in ``dtype`` so no temporary raises the memory baseline."""
    gen = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(1, shape.tokens, shape.hidden, generator=gen, device=device, dtype=dtype)
    weight = torch.randn(shape.vocab, shape.hidden, generator=gen, device=device, dtype=dtype)
    weight.mul_(shape.hidden**-0.5)
    roles = torch.full((1, shape.tokens), int(Role.RESPONSE), device=device)
    roles[:, : int(INSTRUCTION_SHARE * shape.tokens)] = Role.INSTRUCTION
    roles[:, 0] = Role.PAD
    input_ids = torch.randint(0, shape.vocab, (1, shape.tokens), generator=gen, device=device)
    message_weights = torch.ones(1, shape.tokens, device=device)
    message_weights[:, ::3] = 0.5
    return Inputs(hidden.requires_grad_(), weight.requires_grad_(not frozen_head), input_ids, roles, message_weights)


WIT_TABLE = RoleWeights.preset("wit").table()  # every role weighted
IT_TABLE = RoleWeights.preset("it").table()  # instruction weight 0


def hf_ce(x: Inputs) -> torch.Tensor:
    """Plain SFT: model-dtype logits, then transformers' ForCausalLMLoss (fp32 copy, mean CE)."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    labels = x.input_ids.masked_fill(x.roles == Role.PAD, -100)
    return ForCausalLMLoss(F.linear(x.hidden, x.weight), labels, x.weight.shape[0])


def wit_reference(x: Inputs) -> torch.Tensor:
    """The WIT paper's formulation: fp32 logits, full log-softmax, gather, weight, sum / N."""
    logits = F.linear(x.hidden, x.weight).float()[:, :-1]
    token_loss = -logits.log_softmax(-1).gather(-1, x.input_ids[:, 1:, None]).squeeze(-1)
    weights = WIT_TABLE.to(logits.device)[x.roles[:, 1:].long()]
    return (weights * token_loss).sum() / (weights > 0).sum()


def eager(x: Inputs) -> torch.Tensor:
    return weighted_token_loss(F.linear(x.hidden, x.weight), x.input_ids, x.roles, WIT_TABLE).loss


def eager_msg(x: Inputs) -> torch.Tensor:
    logits = F.linear(x.hidden, x.weight)
    return weighted_token_loss(logits, x.input_ids, x.roles, WIT_TABLE, message_weights=x.message_weights).loss


def fused(impl: str, table: torch.Tensor, messages: bool = False) -> Callable[[Inputs], torch.Tensor]:
    def run(x: Inputs) -> torch.Tensor:
        multipliers = x.message_weights if messages else None
        return weighted_linear_cross_entropy(
            x.hidden, x.weight, x.input_ids, x.roles, table, impl=impl, message_weights=multipliers
        ).loss

    return run


CASES: dict[str, tuple[str, Callable[[Inputs], torch.Tensor]]] = {
    "hf_ce": ("(a) HF CE, materialised logits", hf_ce),
    "wit_reference": ("(b) WIT reference, log_softmax", wit_reference),
    "eager": ("(c) eager weighted_token_loss", eager),
    "chunked": ("(d) chunked, all weights > 0", fused("chunked", WIT_TABLE)),
    "chunked_it": ("(e) chunked, 60% weight 0", fused("chunked", IT_TABLE)),
    "eager_msg": ("(c') eager, message weights", eager_msg),
    "chunked_msg": ("(d') chunked, message weights", fused("chunked", WIT_TABLE, messages=True)),
    "cce": ("(f) CCE, all weights > 0", fused("cce", WIT_TABLE)),
    "cce_it": ("(g) CCE, 60% weight 0", fused("cce", IT_TABLE)),
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))  # type: ignore[union-attr]


class PeakMemory:
    """Peak bytes allocated above the level at construction (CUDA allocator, or the process RSS on CPU)."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:  # "5" resets the RSS high-water mark (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self.base = _status_kib("VmRSS") * 1024
        except OSError:  # no resettable high-water mark: the lifetime peak (an overestimate of the baseline)
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.base
        try:
            high = _status_kib("VmHWM") * 1024
        except OSError:
            high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return high - self.base


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(fn: Callable[[Inputs], torch.Tensor], x: Inputs) -> None:
    fn(x).backward()
    x.hidden.grad = x.weight.grad = None


def run_case(case: str, shape: Shape, dtype: torch.dtype, device: str, frozen_head: bool) -> dict[str, float]:
    """Child process: one timed step after a warm-up, and its peak memory.

    On CUDA the warm-up runs the timed shape: Triton autotunes CCE's kernels per shape, so a warm-up on another
    shape left the tuning inside the timed step (CCE with 60% zero-weight rows measured 107x plain CE on an H200).
    On CPU it runs a 64-token slice: a full-size warm-up would leave its freed pages in the RSS that the peak is
    measured above."""
    fn = CASES[case][1]
    warm_tokens = shape.tokens if device == "cuda" else 64
    step(fn, make_inputs(Shape("warm-up", shape.hidden, shape.vocab, warm_tokens), dtype, device, frozen_head))
    x = make_inputs(shape, dtype, device, frozen_head)
    sync(device)
    memory = PeakMemory(device)
    start = time.perf_counter()
    step(fn, x)
    sync(device)
    return {"time_s": time.perf_counter() - start, "peak_bytes": memory.peak()}


def spawn(case: str, shape_key: str, dtype: str, device: str, frozen_head: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", case, "--shapes", shape_key, "--dtype", dtype, "--device", device]
    cmd += ["--frozen-head"] if frozen_head else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{case} on {shape_key} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    cases: list[str], shape_key: str, dtype: str, device: str, rounds: int, frozen_head: bool
) -> dict[str, dict[str, float]]:
    """Best of ``rounds``, the cases interleaved within each round so that a burst of load hits them alike."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for case in cases:
            result = spawn(case, shape_key, dtype, device, frozen_head)
            keep_best(best, case, result)
    return best


def fits(shape: Shape, dtype: torch.dtype, device: str) -> bool:
    """Whether the materialised-logits baseline (about 4 fp32 logits copies + head and its grad) fits."""
    logits = shape.tokens * shape.vocab * 4
    head = shape.vocab * shape.hidden * dtype.itemsize
    need = 4 * logits + 3 * head
    if device == "cuda":
        return need < torch.cuda.mem_get_info()[0]
    return need < 0.8 * _meminfo_available()


def _meminfo_available() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read(), re.MULTILINE).group(1)) * 1024  # type: ignore[union-attr]


def _load() -> str:
    """Other processes' load skews CPU timings: print it with them."""
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the SmolLM2 shape")
    parser.add_argument("--shapes", default=None, help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--dtype", default=None, help="comma-separated (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=None, help="fresh runs per case (default 3, 1 for 8B)")
    parser.add_argument("--frozen-head", action="store_true", help="the head gets no gradient, as under LoRA")
    parser.add_argument("--cases", default=None, help=f"comma-separated, from {', '.join(CASES)} (default: all)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype_names = (args.dtype or ("bfloat16" if args.device == "cuda" else "float32")).split(",")
    if args.child:
        result = run_case(
            args.child, SHAPES[args.shapes], getattr(torch, dtype_names[0]), args.device, args.frozen_head
        )
        print(json.dumps(result))
        return
    shape_keys = (args.shapes or ("smollm2" if args.quick else ",".join(SHAPES))).split(",")
    cases = [c for c in CASES if not c.startswith("cce") or (args.device == "cuda" and cce_available())]
    if args.cases:  # the first one named is the baseline of the ratios
        cases = [case for case in args.cases.split(",") if case in cases]
    print(f"device={args.device} threads={torch.get_num_threads()} cpus={os.cpu_count()} {_load()}")
    for key, dtype_name in ((key, name) for key in shape_keys for name in dtype_names):
        shape = SHAPES[key]
        head = ", frozen head" if args.frozen_head else ""
        print(f"\n{shape.name} {dtype_name}{head}: T={shape.tokens} H={shape.hidden} V={shape.vocab}")
        if not fits(shape, getattr(torch, dtype_name), args.device):
            print("  skipped: the materialised-logits baseline would not fit in memory")
            continue
        rounds = args.rounds or (1 if shape.vocab * shape.hidden > 10**8 else 3)
        results = measure(cases, key, dtype_name, args.device, rounds, args.frozen_head)
        base = results[cases[0]]
        # Every case ends holding the head's gradient; the rest of the peak is what the loss itself costs.
        head_grad = 0 if args.frozen_head else shape.vocab * shape.hidden * getattr(torch, dtype_name).itemsize
        print(f"  best of {rounds}; 'loss MiB' is the peak minus the head's gradient ({head_grad / 2**20:.0f} MiB)")
        ref = f"× {CASES[cases[0]][0].split()[0]}"  # (a) unless --cases names another baseline first
        print(f"  {'case':34} {'time s':>7} {ref:>6} {'peak MiB':>9} {ref:>6} {'loss MiB':>9} {ref:>6}")
        for case, result in results.items():
            peak, loss, ratio = (
                result["peak_bytes"],
                result["peak_bytes"] - head_grad,
                ratios_to(base, result, head_grad),
            )
            print(
                f"  {CASES[case][0]:34} {result['time_s']:7.2f} {ratio['time']:6.2f}"
                f" {peak / 2**20:9.0f} {ratio['peak']:6.2f} {loss / 2**20:9.0f} {ratio['loss']:6.2f}"
            )
    print(f"\n{_load()}")


if __name__ == "__main__":
    main()
