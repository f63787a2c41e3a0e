"""One prepared command for a CUDA machine: the fused losses, a packed training step and the loss benchmark.

    bash bench/gpu_check.sh --out "$OUT"      # on the device machine (carry .gpu_wheels, see scripts/gpu_wheels.sh)
    python bench/gpu_check.py --out DIR       # the same; without CUDA, a CPU dry run at small sizes

Checks, each with a time budget (the whole CUDA run stays inside ``--budget-s``, 7 minutes by default):

* ``install`` (CUDA machines): trl, datasets, cut-cross-entropy and the dependencies the device image lacks, from
  the wheels ``scripts/gpu_wheels.sh`` downloaded into ``.gpu_wheels/``, offline; pip resolves against what is
  installed and takes only what is missing. The project is this checkout (``pip install --no-deps -e .``, and on
  PYTHONPATH in any case).
* ``loss_equality/<head>/<impl>``: ``chunked`` and ``cce`` against ``eager`` (loss, hidden-state gradient, head
  gradient, per-role statistics) on packed rows with mixed role weights, a zero-weight role and ignored tokens, for
  the SmolLM2 and Llama-3-8B head shapes in bf16. Both are also compared with an independent higher-precision
  reference (the formula by hand in fp32, fp64 on CPU): a fused loss passes when it is as close to the reference as
  ``eager`` is (within a factor, or a floor for rounding noise).
* ``train_step/<precision>/<impl>``: one real ``WITSFTTrainer`` step of a random-weight Llama model with
  SmolLM2-135M's shape, packed (BFD, padding-free ``position_ids``) and unpacked (padded): equal loss, grad norm
  and per-role metrics. The attention is the fastest available offline (flash-attn when importable, else sdpa).
* ``bench_loss/<head>``: ``bench/loss.py``'s cases on CUDA, each in a fresh process: time and
  ``max_memory_allocated`` ratios to plain HF cross-entropy on materialised logits.
* ``bench_smoke``: what the CUDA run uses of ``bench/loss.py`` is still there, and its cases run in-process on a
  tiny CPU shape (``--smoke-child``: one child process too), so the benchmark cannot drift unnoticed.

Writes ``gpu_check.log`` and ``gpu_check.json`` (every figure) to ``--out`` (default ``$OUT``, else
``outputs/gpu_check``) and prints a summary table. Without CUDA the CUDA-only checks are ``skipped`` with the
reason, the rest run on CPU in fp32 at small sizes, and the exit status is 0 unless a check that ran failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:  # loaded by path (tests/test_gpu_check.py): the harness is beside it
    sys.path.insert(0, str(REPO / "bench"))
from harness import keep_best, ratios_to

DEFAULT_WHEELS = REPO / ".gpu_wheels"
# Packages the device image lacks; their dependencies (and the project's own) come from the same wheel folder.
INSTALL_PACKAGES = ("trl", "datasets", "cut-cross-entropy")
VERSION_PACKAGES = (
    "torch",
    "triton",
    "transformers",
    "accelerate",
    "peft",
    "trl",
    "datasets",
    "cut-cross-entropy",
    "flash-attn",
    "numpy",
    "pyarrow",
    "fsspec",
)
SCHEMA = 1


# --- bookkeeping: log, results, budgets ------------------------------------------------------------------------


class Tee:
    """Everything written to the console also goes to the log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


@dataclass
class Result:
    status: str  # passed | failed | skipped
    reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Runs checks in order inside one overall deadline; each check has its own (soft) budget."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.records: list[dict[str, Any]] = []

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def run(self, name: str, budget_s: float, fn: Callable[[float], Result], skip: str | None = None) -> Result:
        """``fn(deadline_s)`` gets the seconds it may use; ``skip`` records the check as skipped with that reason."""
        if skip is None and self.remaining() < min(budget_s, 20.0):
            skip = f"time budget: {self.remaining():.0f} s left of the run's {self.budget_s:.0f} s"
        print(f"\n=== {name} (budget {budget_s:.0f} s) ===", flush=True)
        started = time.perf_counter()
        if skip is not None:
            result = Result("skipped", skip)
            print(f"skipped: {skip}")
        else:
            try:
                result = fn(min(budget_s, self.remaining()))
            except Exception as error:  # noqa: BLE001 - a crash fails this check; the others still run
                traceback.print_exc()
                result = Result("failed", f"{type(error).__name__}: {error}"[:1000])
            _release_memory()
        seconds = time.perf_counter() - started
        record = {"name": name, "status": result.status, "reason": result.reason, "seconds": round(seconds, 2)}
        record |= {"budget_s": budget_s, "over_budget": seconds > budget_s, "figures": result.figures}
        self.records.append(record)
        print(f"--> {result.status}{f': {result.reason}' if result.reason else ''} ({seconds:.1f} s)", flush=True)
        return result


def _release_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _round(value: float, digits: int = 4) -> float:
    """Significant digits, for the JSON and the table."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# --- install ---------------------------------------------------------------------------------------------------


def cuda_machine() -> bool:
    """Whether this looks like a CUDA machine, without importing torch (the install runs first)."""
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


def _project_requirements() -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the project's dependencies are then assumed present
        return []
    with open(REPO / "pyproject.toml", "rb") as handle:
        return list(tomllib.load(handle)["project"]["dependencies"])


def _dist_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-").lower()


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", *args]
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    print((done.stdout + done.stderr).strip()[-6000:], flush=True)
    return done


def check_install(wheels: Path) -> Result:
    """pip resolves against what is installed and takes only what is missing from ``wheels`` (offline). If that
    resolution fails (an unforeseen pin), every wheel whose distribution is absent is installed with --no-deps."""
    base = ["install", "--no-index", "--find-links", str(wheels), "--no-cache-dir", "--no-compile"]
    base += ["--disable-pip-version-check"]
    requirements = [*INSTALL_PACKAGES, *_project_requirements()]
    figures: dict[str, Any] = {"wheels": sorted(w.name for w in wheels.glob("*.whl"))}
    resolved = _pip([*base, *requirements])
    figures["resolved_install_rc"] = resolved.returncode
    if resolved.returncode != 0:
        missing = [str(w) for w in sorted(wheels.glob("*.whl")) if not _installed(_dist_name(w))]
        figures["fallback_no_deps"] = [Path(w).name for w in missing]
        if missing:
            figures["fallback_rc"] = _pip([*base, "--no-deps", *missing]).returncode
    project = _pip(["install", "--no-deps", "--no-index", "--no-build-isolation", "--no-cache-dir", "-e", str(REPO)])
    figures["project_editable_rc"] = project.returncode  # else the checkout on PYTHONPATH (set in main) serves
    importlib.invalidate_caches()
    absent = [name for name in ("trl", "datasets", "cut_cross_entropy") if importlib.util.find_spec(name) is None]
    figures["versions"] = _versions()
    if absent:
        return Result("failed", f"not importable after the install: {', '.join(absent)}", figures)
    return Result("passed", None, figures)


# --- shared test data ------------------------------------------------------------------------------------------

# Mixed weights, a zero-weight role (template) and PAD targets (sequence starts, trailing padding).
MIXED_WEIGHTS = {"template": 0.0, "system": 0.3, "instruction": 0.5, "response": 1.0, "eot": 1.7, "reasoning": 0.8}


def mixed_weights() -> Any:
    from wit_plugin.roles import TRAINABLE_ROLES, RoleWeights

    return RoleWeights(**{role.label: MIXED_WEIGHTS.get(role.label, 0.6) for role in TRAINABLE_ROLES})


def packed_roles(rows: int, width: int, max_sequence: int, seed: int = 0) -> Any:
    """Role codes of ``rows`` packed rows: chat-like sequences back to back (every role in each), each starting with
    PAD (never a target), and trailing padding in the last row."""
    import torch

    from wit_plugin.roles import Role

    rng = random.Random(seed)
    turn = [Role.TEMPLATE, Role.SYSTEM, Role.TEMPLATE, Role.INSTRUCTION, Role.TEMPLATE]
    turn += [r for r in Role if r.name == "REASONING"] + [Role.RESPONSE, Role.EOT]
    roles = torch.full((rows, width), int(Role.PAD), dtype=torch.long)
    for row in range(rows):
        used = width - (width // 8 if row == rows - 1 else 0)
        start = 0
        while start < used:
            end = min(used, start + rng.randint(max_sequence // 2, max_sequence))
            cursor = start
            while cursor < end:
                for role in turn:
                    length = 1 if role is Role.EOT else rng.randint(1, max(1, max_sequence // 16))
                    roles[row, cursor : min(end, cursor + length)] = int(role)
                    cursor += length
            roles[row, start] = int(Role.PAD)
            start = end
    return roles


# --- loss equality ---------------------------------------------------------------------------------------------

HEADS = {"smollm2": (576, 49_152), "llama3-8b": (4096, 128_256)}  # hidden, vocab (as in bench/loss.py)


def compare(value: Any, reference: Any) -> tuple[float, float]:
    """(max |value - reference|, ‖value - reference‖ / ‖reference‖), in fp32 at least."""
    import torch

    dtype = torch.promote_types(torch.promote_types(value.dtype, reference.dtype), torch.float32)
    reference = reference.to(dtype)
    diff = value.to(dtype) - reference
    return float(diff.abs().max()), float(diff.norm() / reference.norm().clamp_min(1e-30))


def reference_loss(hidden: Any, weight: Any, input_ids: Any, roles: Any, table: Any, num_items: Any) -> Any:
    """Σ w(role)·CE / N by hand, in the inputs' dtype: position t predicts token t+1, PAD targets never count."""
    from wit_plugin.roles import Role

    logits = (hidden @ weight.T)[:, :-1]
    target_roles = roles[:, 1:]
    weights = table.to(hidden.device, hidden.dtype)[target_roles].masked_fill(target_roles == int(Role.PAD), 0)
    log_probs = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return -(weights * log_probs).sum() / num_items


# cut-cross-entropy (25.1.1, its newest release) adds each vocabulary block's share of the hidden-state and head
# gradients into a buffer in the inputs' bf16/fp16 (its backward kernel, `_mm_backward` into `dE`/`dC`; there is no
# fp32-accumulation option): one rounding per block, hundreds per element, where eager rounds each product once.
# Measured on an H200 (README): hidden-state gradient 2.1e-2 relative to fp32 on SmolLM2's head, 9.6e-3 on
# Llama-3-8B's, eager 2.7e-3 / 2.4e-3. That is the kernel's precision, checked here against this bound; ``chunked``
# keeps eager's tolerance.
CCE_HALF_PRECISION_FLOORS = {"grad_hidden": 5e-2, "grad_head": 5e-2}


def check_loss_equality(head: str, impl: str, device: str, dtype_name: str, rows: int, width: int) -> Result:
    import torch
    import torch.nn.functional as F

    from wit_plugin.loss.linear_ce import weighted_linear_cross_entropy
    from wit_plugin.loss.weighted import weighted_token_loss
    from wit_plugin.roles import Role

    hidden_size, vocab = HEADS[head]
    dtype = getattr(torch, dtype_name)
    ref_dtype = torch.float64 if device == "cpu" else torch.float32  # fp32 on CUDA: tf32 off below
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(rows, width, hidden_size, generator=gen, device=device, dtype=dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen, device=device) * hidden_size**-0.5).to(dtype)
    roles = packed_roles(rows, width, max_sequence=min(512, width // 3)).to(device)
    input_ids = torch.randint(0, vocab, (rows, width), generator=gen, device=device)
    table = mixed_weights().table(device)
    targets = roles[:, 1:]
    weighted = int((table[targets] > 0).sum())
    num_items = torch.tensor(weighted * 1.25, device=device)  # as if another micro-batch shared the normaliser
    figures: dict[str, Any] = {"dtype": dtype_name, "reference_dtype": str(ref_dtype).removeprefix("torch.")}
    figures |= {"rows": rows, "width": width, "hidden": hidden_size, "vocab": vocab, "weighted_targets": weighted}
    figures["pad_targets"] = pad = int((targets == int(Role.PAD)).sum())
    figures["zero_weight_targets"] = int((table[targets] == 0).sum()) - pad

    def run(kind: str) -> tuple[Any, Any, Any, Any]:
        h = hidden.detach().clone().to(ref_dtype if kind == "reference" else dtype).requires_grad_()
        w = weight.detach().clone().to(ref_dtype if kind == "reference" else dtype).requires_grad_()
        stats = None
        if kind == "reference":
            loss = reference_loss(h, w, input_ids, roles, table, num_items)
        elif kind == "eager":
            result = weighted_token_loss(F.linear(h, w), input_ids, roles, table, num_items)
            loss, stats = result.loss, result.stats
        else:
            # include_zero_weight: every scored token in the stats, as eager reports them
            fused = weighted_linear_cross_entropy
            result = fused(h, w, input_ids, roles, table, num_items, impl=kind, include_zero_weight=True)
            loss, stats = result.loss, result.stats
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.detach(), h.grad, w.grad, stats

    reference = run("reference")
    eager = run("eager")
    fused = run(impl)
    names = ("loss", "grad_hidden", "grad_head")
    problems = []
    # Rounding floors: fp32 against fp64 is tight; bf16 rounds every logit and gradient entry (2^-8 relative).
    floors = {"loss": 1e-6, "grad_hidden": 1e-5, "grad_head": 1e-5}
    if dtype != torch.float32:
        floors = {"loss": 2e-3, "grad_hidden": 1e-2, "grad_head": 1e-2}
    if dtype != torch.float32 and impl == "cce":
        floors |= CCE_HALF_PRECISION_FLOORS
    factor = 3.0
    for index, name in enumerate(names):
        ours, theirs, ref = fused[index], eager[index], reference[index]
        max_abs, rel = compare(ours, theirs)
        entry = {
            f"{impl}_vs_eager_max_abs_diff": max_abs,
            f"{impl}_vs_eager_rel_err": rel,
            f"{impl}_vs_reference_rel_err": compare(ours, ref)[1],
            "eager_vs_reference_rel_err": compare(theirs, ref)[1],
        }
        entry["tolerance"] = max(factor * entry["eager_vs_reference_rel_err"], floors[name])
        entry = {key: _round(value) for key, value in entry.items()}
        if name == "loss":
            entry |= {impl: float(ours), "eager": float(theirs), "reference": float(ref)}
        figures[name] = entry
        if not entry[f"{impl}_vs_reference_rel_err"] <= entry["tolerance"]:
            problems.append(
                f"{name}: {impl} rel err {entry[f'{impl}_vs_reference_rel_err']:.3g} > {entry['tolerance']:.3g}"
            )
    stats_eager, stats_fused = eager[3], fused[3]
    tokens_equal = torch.equal(stats_eager.tokens.cpu(), stats_fused.tokens.cpu())
    scored = stats_eager.tokens.cpu() > 0
    role_diff = (stats_fused.loss_sum.cpu() - stats_eager.loss_sum.cpu()).abs()[scored]
    role_rel = float((role_diff / stats_eager.loss_sum.cpu()[scored].abs().clamp_min(1e-30)).max())
    role_tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    figures["role_stats"] = {
        "tokens_equal": tokens_equal,
        "tokens": {Role(i).label: int(n) for i, n in enumerate(stats_eager.tokens.tolist()) if n},
        "loss_sum_max_rel_diff": _round(role_rel),
        "tolerance": role_tolerance,
    }
    if not tokens_equal:
        problems.append("per-role token counts differ from eager")
    if not role_rel <= role_tolerance:
        problems.append(f"per-role CE sums differ from eager by {role_rel:.3g} (> {role_tolerance:g})")
    if impl == "cce":
        unfiltered = _cce_unfiltered_head_grad(hidden, weight, input_ids, roles, table, num_items)
        figures["cce_gradient_filter"] = {
            "unfiltered_vs_reference_rel_err": _round(compare(unfiltered, reference[2])[1]),
            "default_vs_unfiltered_rel_diff": _round(compare(fused[2], unfiltered)[1]),
        }
    del reference, eager, fused
    return Result("failed" if problems else "passed", "; ".join(problems) or None, figures)


def _cce_unfiltered_head_grad(hidden: Any, weight: Any, input_ids: Any, roles: Any, table: Any, n: Any) -> Any:
    """Informational: cut-cross-entropy skips gradient blocks whose softmax is below bf16 eps/32 by default
    (``filter_eps='high'``, as ``wit_loss_impl='cce'`` calls it); the head gradient with the filter off shows how
    much of the difference to the reference that filter is."""
    from cut_cross_entropy import linear_cross_entropy

    from wit_plugin.loss.weighted import flat_targets

    targets = flat_targets(input_ids, roles, table)
    rows = (targets.weights > 0).nonzero().squeeze(1)
    w = weight.detach().clone().requires_grad_()
    ce = linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1])[rows], w, targets.tokens[rows], reduction="none", filter_eps=None
    )
    ((ce.float() * targets.weights[rows]).sum() / n).backward()
    return w.grad


# --- the training step -----------------------------------------------------------------------------------------

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WORDS = ("the", "model", "weight", "role", "answer", "river", "blue", "seven", "explain", "list", "city", "why")


def build_tokenizer() -> Any:
    """A byte-level tokenizer with no merges (one token per byte) and ChatML: no download, exact offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={char: index for index, char in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def chat_rows(count: int, words: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(max(1, n // 3), n))).capitalize() + "."

    rows = []
    for index in range(count):
        messages = [{"role": "system", "content": text(words // 2)}] if index % 2 else []
        for _ in range(1 + index % 3 // 2):
            messages += [{"role": "user", "content": text(words)}, {"role": "assistant", "content": text(words)}]
        rows.append({"messages": messages})
    return rows


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


SMOLLM2_135M = ModelShape(vocab=49_152, hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3)
TINY = ModelShape(vocab=320, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)


def build_model(shape: ModelShape, attn: str) -> Any:
    """A random-weight Llama (tied embeddings, as SmolLM2): no model hub needed."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=8192,
        rope_theta=100_000.0,
        tie_word_embeddings=True,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)


def pick_attention(device: str, requested: str) -> tuple[str, str]:
    if requested != "auto":
        return requested, "requested"
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2", "flash-attn is installed"
    why = "no flash-attn wheel for this torch offline" if device == "cuda" else "CPU"
    return "sdpa", f"{why}; packed rows get a block-diagonal mask from position_ids"


@dataclass
class TrainSetup:
    tokenizer: Any
    rows: list[dict[str, Any]]
    model: Any
    attn: str
    attn_reason: str
    row_tokens: list[int]


def train_setup(device: str, attn_request: str) -> TrainSetup:
    from wit_plugin.tagging import RoleTagger

    tokenizer = build_tokenizer()
    rows = chat_rows(count=24 if device == "cuda" else 6, words=24 if device == "cuda" else 10)
    tagger = RoleTagger(tokenizer)
    row_tokens = [len(tagger.tag(row).input_ids) for row in rows]
    attn, reason = pick_attention(device, attn_request)
    shape = SMOLLM2_135M if device == "cuda" else TINY
    return TrainSetup(tokenizer, rows, build_model(shape, attn), attn, reason, row_tokens)


def one_step(setup: TrainSetup, packed: bool, impl: str, bf16: bool, device: str, workdir: Path) -> dict[str, Any]:
    from datasets import Dataset

    from wit_plugin import WITConfig, WITSFTTrainer
    from wit_plugin.roles import ROLES_KEY

    layout = {"packing": True, "max_length": sum(setup.row_tokens), "per_device_train_batch_size": 1}
    if not packed:
        layout = {"packing": False, "max_length": None, "per_device_train_batch_size": len(setup.rows)}
    args = WITConfig(
        output_dir=str(workdir / ("packed" if packed else "unpacked")),
        **layout,
        wit_loss_impl=impl,
        **{f"wit_{role}_weight": value for role, value in MIXED_WEIGHTS.items() if role in ("template", "eot")},
        wit_prompt_weight=0.5,
        wit_response_weight=1.0,
        max_steps=1,
        learning_rate=1e-4,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1e9,  # the norm is computed (and logged), never clipped
        logging_steps=1,
        bf16=bf16,
        use_cpu=device == "cpu",
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    model = copy.deepcopy(setup.model)
    trainer = WITSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(setup.rows), processing_class=setup.tokenizer
    )
    batch = trainer.data_collator(list(trainer.train_dataset))
    layout_figures = {
        "batch_shape": list(batch["input_ids"].shape),
        "has_attention_mask": "attention_mask" in batch,
        "has_position_ids": "position_ids" in batch,
        "sequences": int((batch["position_ids"] == 0).sum()) if "position_ids" in batch else len(setup.rows),
        "loss_impl": getattr(trainer, "_wit_impl", None),
        "roles_column": ROLES_KEY in batch,
    }
    trainer.train()
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    del trainer, model
    return {"log": {k: v for k, v in log.items() if isinstance(v, (int, float))}, **layout_figures}


def check_train_step(setup: TrainSetup, impl: str, bf16: bool, device: str) -> Result:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory(prefix="wit_gpu_check_") as tmp:
        packed = one_step(setup, True, impl, bf16, device, Path(tmp))
        unpacked = one_step(setup, False, impl, bf16, device, Path(tmp))
    figures: dict[str, Any] = {"attention": setup.attn, "attention_reason": setup.attn_reason, "bf16": bf16}
    figures |= {"rows": len(setup.rows), "tokens": sum(setup.row_tokens), "packed": packed, "unpacked": unpacked}
    problems = []
    if packed["batch_shape"][0] != 1 or packed["has_attention_mask"] or not packed["has_position_ids"]:
        problems.append(f"the packed batch is not one padding-free row: {packed['batch_shape']}")
    if packed["sequences"] != len(setup.rows):
        problems.append(f"the packed row holds {packed['sequences']} sequences, not {len(setup.rows)}")
    if unpacked["batch_shape"][0] != len(setup.rows) or not unpacked["has_attention_mask"]:
        problems.append(f"the unpacked batch is not padded rows: {unpacked['batch_shape']}")
    tolerance = {"loss": 5e-3, "grad_norm": 2e-2, "role_loss": 2e-2} if bf16 else {}
    tolerance = tolerance or {"loss": 1e-5, "grad_norm": 1e-4, "role_loss": 1e-4}
    figures["tolerance"] = tolerance
    comparisons: dict[str, float] = {}
    for key in ("loss", "grad_norm"):
        a, b = packed["log"].get(key), unpacked["log"].get(key)
        if a is None or b is None:
            problems.append(f"'{key}' was not logged")
            continue
        comparisons[f"{key}_rel_diff"] = rel = _round(abs(a - b) / max(abs(b), 1e-30))
        if not rel <= tolerance[key]:
            problems.append(f"{key}: packed {a:.6g} vs unpacked {b:.6g} (rel {rel:.3g} > {tolerance[key]:g})")
    role_keys = sorted(k for k in unpacked["log"] if k.startswith("wit/"))
    expected = [f"wit/{kind}_{role}" for kind in ("loss", "tokens") for role in ("system", "instruction", "response")]
    expected += ["wit/loss_template", "wit/tokens_eot"]
    missing = [key for key in expected if key not in unpacked["log"] or key not in packed["log"]]
    if missing:
        problems.append(f"per-role metrics not logged: {', '.join(missing)}")
    worst = 0.0
    for key in role_keys:
        a, b = packed["log"].get(key), unpacked["log"].get(key)
        if a is None:
            continue
        if key.startswith("wit/tokens_") and a != b:
            problems.append(f"{key}: packed {a} vs unpacked {b}")
        elif key.startswith("wit/loss_") and b:
            worst = max(worst, abs(a - b) / abs(b))
    comparisons["role_loss_max_rel_diff"] = _round(worst)
    if not worst <= tolerance["role_loss"]:
        problems.append(f"per-role losses differ by up to {worst:.3g} (> {tolerance['role_loss']:g})")
    figures["comparison"] = comparisons
    figures["role_metrics"] = {key: unpacked["log"][key] for key in role_keys}
    return Result("failed" if problems else "passed", "; ".join(problems) or None, figures)


# --- bench/loss.py ---------------------------------------------------------------------------------------------


def load_loss_bench() -> Any:
    """``bench/loss.py`` as a module (it is a script, not a package); its children run it by path."""
    spec = importlib.util.spec_from_file_location("wit_bench_loss", REPO / "bench" / "loss.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def ratios(bench: Any, results: dict[str, dict[str, float]], head_grad: int) -> dict[str, dict[str, float]]:
    """Every case against (a), plain HF CE: time, peak memory, and the peak less the head's gradient."""
    table = {}
    for case, result in results.items():
        peak, ratio = result["peak_bytes"], ratios_to(results["hf_ce"], result, head_grad)
        table[case] = {
            "label": bench.CASES[case][0],
            "time_s": _round(result["time_s"]),
            "time_ratio": _round(ratio["time"], 3),
            "peak_mib": _round(peak / 2**20),
            "peak_ratio": _round(ratio["peak"], 3),
            "loss_mib": _round((peak - head_grad) / 2**20),
            "loss_ratio": _round(ratio["loss"], 3),
        }
    return table


def check_bench(bench: Any, shape_key: str, rounds: int, deadline_s: float) -> Result:
    """Like ``bench/loss.py --shapes KEY --dtype bfloat16``: best of ``rounds``, cases interleaved, each in a fresh
    process; no child is started that would likely end past ``deadline_s`` (its cases are listed as not run)."""
    import torch

    from wit_plugin.loss.linear_ce import cce_available

    started = time.perf_counter()
    shape = bench.SHAPES[shape_key]
    cases = [case for case in bench.CASES if not case.startswith("cce") or cce_available()]
    if not bench.fits(shape, torch.bfloat16, "cuda"):
        return Result("skipped", "the materialised-logits baseline does not fit in GPU memory")
    best: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    spawns, done, out_of_time = 0, 0, False
    for _ in range(rounds):
        for case in [case for case in cases if case not in errors]:
            elapsed = time.perf_counter() - started
            if spawns and elapsed / spawns * (spawns + 1) > deadline_s:  # the next child would end past the budget
                out_of_time = True
                break
            spawns += 1
            try:
                result = bench.spawn(case, shape_key, "bfloat16", "cuda", False)
            except RuntimeError as error:  # one case's crash (its stderr tail) fails the check, not the others
                errors[case] = str(error)[-1500:]
                print(f"  {case} failed:\n{errors[case]}")
                continue
            keep_best(best, case, result)
            line = f"{result['time_s'] * 1e3:9.2f} ms {result['peak_bytes'] / 2**20:9.0f} MiB"
            print(f"  round {done + 1} {case:14} {line}")
        if out_of_time:
            break
        done += 1
    head_grad = shape.vocab * shape.hidden * torch.bfloat16.itemsize
    figures: dict[str, Any] = {"shape": shape.name, "tokens": shape.tokens, "hidden": shape.hidden}
    figures |= {"vocab": shape.vocab, "dtype": "bfloat16", "rounds": done, "head_grad_mib": _round(head_grad / 2**20)}
    figures["cases"] = ratios(bench, best, head_grad) if "hf_ce" in best else {}
    figures["raw"] = best
    if errors:
        figures["errors"] = errors
    not_run = [case for case in cases if case not in best and case not in errors]
    if not_run:
        figures["not_run"] = not_run  # the time budget ran out first
    if "hf_ce" not in best and not errors:
        return Result("skipped", "time budget: not even the baseline ran", figures)
    if not cce_available():
        figures["note"] = "cut_cross_entropy is not installed: no cce cases"
    return Result("failed" if errors else "passed", f"cases failed: {', '.join(errors)}" if errors else None, figures)


def check_bench_smoke(bench: Any, spawn_child: bool) -> Result:
    """What the CUDA run uses of ``bench/loss.py`` (cases, shapes, ``spawn``, ``fits``), and its cases run in-process
    on a tiny CPU shape; ``spawn_child`` also runs one real child process through its command line."""
    import inspect

    import torch

    problems = []
    cases = {"hf_ce", "wit_reference", "eager", "chunked", "chunked_it", "cce", "cce_it"}
    if not cases <= set(bench.CASES):
        problems.append(f"cases missing from bench/loss.py: {sorted(cases - set(bench.CASES))}")
    if not set(HEADS) <= set(bench.SHAPES):
        problems.append(f"shapes missing from bench/loss.py: {sorted(set(HEADS) - set(bench.SHAPES))}")
    expected = {"spawn": ["case", "shape_key", "dtype", "device", "frozen_head"], "fits": ["shape", "dtype", "device"]}
    for name, parameters in expected.items():
        found = list(inspect.signature(getattr(bench, name)).parameters)
        if found != parameters:
            problems.append(f"bench/loss.py {name}{tuple(found)} is not {name}{tuple(parameters)}")
    if problems:
        return Result("failed", "; ".join(problems))
    tiny = bench.Shape("smoke", 64, 1024, 256)
    cpu_cases = [case for case in bench.CASES if not case.startswith("cce")]
    results = {case: bench.run_case(case, tiny, torch.float32, "cpu", False) for case in cpu_cases}
    figures: dict[str, Any] = {"shape": "H=64 V=1024 T=256 float32 cpu", "cases": ratios(bench, results, 1024 * 64 * 4)}
    if spawn_child:
        figures["child"] = bench.spawn("chunked_it", "smollm2", "float32", "cpu", False)
    bad = [case for case, result in results.items() if not result["time_s"] > 0]
    return Result("failed" if bad else "passed", f"no timing for {bad}" if bad else None, figures)


# --- main ------------------------------------------------------------------------------------------------------


def summary_table(records: list[dict[str, Any]]) -> str:
    lines = [f"{'check':34} {'status':8} {'time s':>7} {'budget':>6}  detail", "-" * 110]
    for record in records:
        lines.append(
            f"{record['name']:34} {record['status']:8} {record['seconds']:7.1f} {record['budget_s']:6.0f}  "
            f"{_detail(record)}"[:220]
        )
    return "\n".join(lines)


def _detail(record: dict[str, Any]) -> str:
    figures = record["figures"]
    if record["status"] != "passed":
        return record["reason"] or ""
    name = record["name"]
    if name.startswith("loss_equality"):
        impl = name.rsplit("/", 1)[1]
        parts = [
            f"{key} {figures[key][f'{impl}_vs_reference_rel_err']:.2g}" for key in ("loss", "grad_hidden", "grad_head")
        ]
        return (
            f"rel err vs {figures['reference_dtype']} ref: " + ", ".join(parts) + f" (eager: "
            f"{figures['grad_head']['eager_vs_reference_rel_err']:.2g} head); max|Δ| vs eager "
            f"{figures['grad_head'][f'{impl}_vs_eager_max_abs_diff']:.2g}"
        )
    if name.startswith("train_step"):
        comparison = figures["comparison"]
        return (
            f"packed vs unpacked: loss {comparison.get('loss_rel_diff')}, grad norm {comparison.get('grad_norm_rel_diff')},"
            f" roles {comparison.get('role_loss_max_rel_diff')} ({figures['attention']}, {figures['tokens']} tokens)"
        )
    if name == "bench_smoke":
        child = " and one child process" if "child" in figures else ""
        return f"bench/loss.py interface ok; {len(figures['cases'])} CPU cases ran in-process on a tiny shape{child}"
    if name.startswith("bench_loss"):
        cases = figures.get("cases", {})
        partial = f"not run (time budget): {', '.join(figures['not_run'])}; " if figures.get("not_run") else ""
        return partial + ", ".join(
            f"{case} {v['time_ratio']}×t {v['peak_ratio']}×mem" for case, v in cases.items() if case != "hf_ce"
        )
    if name == "install":
        versions = figures.get("versions", {})
        return ", ".join(f"{k} {versions.get(k)}" for k in ("trl", "datasets", "cut-cross-entropy"))
    return ""


def readme_table(records: list[dict[str, Any]]) -> str:
    """Markdown rows for README's loss table, straight from the bench figures."""
    lines = []
    for record in records:
        if not record["name"].startswith("bench_loss/") or record["status"] != "passed":
            continue
        figures = record["figures"]
        for case, v in figures["cases"].items():
            if case == "hf_ce":
                continue
            lines.append(
                f"| {figures['shape']} T={figures['tokens']}, bf16, CUDA | {v['label']} | {v['time_ratio']}× | {v['peak_ratio']}× |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.log/.json (default $OUT)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument(
        "--install",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: on CUDA machines (yes: here too, into this environment)",
    )
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS)
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run, install included")
    parser.add_argument("--bench-rounds", type=int, default=2, help="best of N fresh runs per case (time allowing)")
    parser.add_argument("--attn", default="auto", help="attention for the training step (default: fastest offline)")
    parser.add_argument("--smoke-child", action="store_true", help="bench_smoke also spawns one bench/loss.py child")
    parser.add_argument("--dtype", default=None, help="loss-equality dtype (default bfloat16 on CUDA, float32 on CPU)")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or REPO / "outputs" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    for key, value in {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    # bench/loss.py's children import wit_plugin too: the checkout serves it when it is not installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(REPO))
    with (
        open(out / "gpu_check.log", "w") as log,
        contextlib.redirect_stdout(Tee(sys.stdout, log)),
        contextlib.redirect_stderr(Tee(sys.stderr, log)),
    ):
        report = run_checks(args)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.log'}")
    return 1 if report["summary"]["failed"] else 0


def run_checks(args: argparse.Namespace) -> dict[str, Any]:
    runner = Runner(args.budget_s)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"gpu_check: {started} python {platform.python_version()} on {platform.node()}")
    install_skip = None
    if args.install == "no":
        install_skip = "--install no"
    elif not args.wheels.is_dir():
        install_skip = f"no wheel folder {args.wheels} (scripts/gpu_wheels.sh makes it)"
    elif args.install == "auto" and not cuda_machine():
        install_skip = "no CUDA: the dry run uses this environment as it is (--install yes to force)"
    runner.run("install", 90, lambda _: check_install(args.wheels), skip=install_skip)

    import torch  # only now: the install may have changed what is importable

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    if device == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    no_cuda = None if cuda else "CUDA only (this is the CPU dry run)"
    from wit_plugin.loss.linear_ce import cce_available

    no_cce = no_cuda or (None if cce_available() else "cut_cross_entropy is not installed")
    environment: dict[str, Any] = {"device": device, "python": platform.python_version(), "versions": _versions()}
    environment["torch_cuda"] = torch.version.cuda
    if cuda:
        props = torch.cuda.get_device_properties(0)
        environment |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
        environment["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    print(json.dumps(environment, indent=1))

    # Loss equality: bf16 at the benchmark's sizes on CUDA; fp32 (fp64 reference) and a short packed batch on CPU.
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    sizes = {"smollm2": (2, 4096), "llama3-8b": (2, 2048)} if cuda else {"smollm2": (2, 96), "llama3-8b": None}
    budgets = {("smollm2", "chunked"): 30, ("smollm2", "cce"): 90, ("llama3-8b", "chunked"): 30}
    for head in HEADS:
        for impl in ("chunked", "cce"):
            size = sizes[head]
            skip = no_cce if impl == "cce" else None
            if size is None:
                skip = skip or "CUDA only: the Llama-3-8B head (V=128256) needs several GB per gradient copy"
            runner.run(
                f"loss_equality/{head}/{impl}",
                budgets.get((head, impl), 45),
                lambda _, head=head, impl=impl, size=size: check_loss_equality(head, impl, device, dtype, *size),
                skip=skip,
            )

    # One WITSFTTrainer step, packed vs unpacked.
    train_missing = [name for name in ("trl", "datasets") if importlib.util.find_spec(name) is None]
    setup: list[TrainSetup] = []

    def train(impl: str, bf16: bool) -> Callable[[float], Result]:
        def run(_: float) -> Result:
            if not setup:
                setup.append(train_setup(device, args.attn))
            return check_train_step(setup[0], impl, bf16, device)

        return run

    train_skip = f"{', '.join(train_missing)} not installed" if train_missing else None
    runner.run("train_step/fp32/chunked", 90, train("chunked", False), skip=train_skip)
    runner.run("train_step/bf16/chunked", 45, train("chunked", True), skip=train_skip or no_cuda)
    runner.run("train_step/bf16/cce", 45, train("cce", True), skip=train_skip or no_cce)
    setup.clear()

    bench = load_loss_bench()
    runner.run("bench_smoke", 30, lambda _: check_bench_smoke(bench, spawn_child=args.smoke_child))
    # The 8B head: one round (as bench/loss.py does); SmolLM2's extra rounds leave it time (first rounds first).
    rounds, reserve = {"smollm2": args.bench_rounds, "llama3-8b": 1}, {"smollm2": 75.0, "llama3-8b": 0.0}
    budgets = {"smollm2": 180, "llama3-8b": 120}  # SmolLM2: two rounds of its 7 cases (~7 s a fresh process each)
    for key in ("smollm2", "llama3-8b"):
        runner.run(
            f"bench_loss/{key}",
            budgets[key],
            lambda deadline, key=key: check_bench(bench, key, rounds[key], deadline - reserve[key]),
            skip=no_cuda and f"{no_cuda}; README has bench/loss.py's CPU figures",
        )

    records = runner.records
    counts = {status: sum(r["status"] == status for r in records) for status in ("passed", "failed", "skipped")}
    elapsed = time.perf_counter() - runner.start
    print("\n" + summary_table(records))
    print(f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped in {elapsed:.0f} s")
    table = readme_table(records)
    if table:
        print("\nREADME rows (ratios to (a), plain HF CE):\n| shape | case | time | peak memory |\n|---|---|---|---|")
        print(table)
    return {
        "schema": SCHEMA,
        "started": started,
        "mode": "cuda" if cuda else "cpu-dry-run",
        "budget_s": args.budget_s,
        "elapsed_s": round(elapsed, 1),
        "environment": environment,
        "checks": records,
        "summary": counts,
    }


if __name__ == "__main__":
    sys.exit(main())
