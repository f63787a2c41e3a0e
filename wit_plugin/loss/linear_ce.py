"""The weighted token loss fused with the LM head: L = Σ_t w_t·CE_t / N without a [tokens × vocab] logits tensor.

Materialised logits cost tokens × vocab × 4 bytes in fp32 (several copies once autograd saves its
intermediates), more than the rest of a small model's activations. Here the logits exist one chunk of rows
at a time: each chunk's CE *and* its gradients (softmax − onehot)·w/N with respect to the hidden states and
the head weight are computed in the forward pass, so the backward pass only scales the saved gradients.

Rows with weight 0 (and ignored targets) are dropped before chunking: they cost nothing, and their CE is not
computed unless asked for (``include_zero_weight``), for logging only, forward-only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from wit_plugin import options
from wit_plugin.loss.weighted import WeightedLoss, flat_targets, normaliser, role_stats
from wit_plugin.roles import IGNORE_INDEX

# Every chunk streams the whole head (and its gradient) through memory, so a chunk needs a few hundred rows
# for its matmuls to stay compute-bound; past ~512 rows it only costs memory (bench/loss.py on CPU: a
# Llama-3 head needs ~500 rows to match materialised logits in speed, SmolLM2's is flat from 256 rows).
# The byte budget caps the chunk's fp32 logits for large vocabularies (a bf16 copy adds half again).
MAX_CHUNK_ROWS = 512
DEFAULT_CHUNK_BYTES = 256 * 2**20


def cce_available() -> bool:
    return importlib.util.find_spec("cut_cross_entropy") is not None


def resolve_loss_impl(name: str, device: torch.device | str) -> str:
    """The implementation ``name`` means on ``device``: ``chunked`` (pure PyTorch, any device) or ``cce``.

    ``auto`` is ``chunked`` everywhere. Apple's Cut Cross-Entropy (``cce``, CUDA) holds not even a chunk of
    logits, but measured on an H200 (README, *GPU check*) it was slower than ``chunked`` with exact gradients, and
    its bf16 hidden-state gradient 8× further from fp32 than eager's: an explicit choice for memory, not the
    default. Liger-Kernel's fused linear CE is deliberately not an option: up to at least 0.8.1 its backward
    scales the gradient computed in the forward by one scalar, so with ``reduction='none'`` and per-token weights
    its gradients are wrong.
    """
    if options.check("wit_loss_impl", name) not in ("auto", *options.FUSED_LOSS_IMPLS):
        raise ValueError(f"wit_loss_impl {name!r} computes the loss from logits: it has no fused implementation")
    on_cuda = torch.device(device).type == "cuda"
    if name == "cce" and not (on_cuda and cce_available()):
        raise ValueError(
            "wit loss implementation 'cce' needs CUDA tensors and the cut_cross_entropy package "
            f"(device {torch.device(device)}, cut_cross_entropy installed: {cce_available()}); use 'chunked' or 'auto'"
        )
    return "chunked" if name == "auto" else name


def auto_chunk_rows(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk: :data:`MAX_CHUNK_ROWS`, fewer if their fp32 logits would exceed ``chunk_bytes``."""
    return max(1, min(MAX_CHUNK_ROWS, chunk_bytes // (4 * vocab_size)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and CE run in fp32 at least, whatever the model's dtype."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class _Grads:
    """Gradient buffers filled chunk by chunk; ``None`` where no gradient is wanted."""

    hidden: torch.Tensor | None
    # In the weight's dtype, as Liger and CCE accumulate by default: one rounding per chunk. An fp32
    # accumulator would cost a [V, H] temporary and an extra pass over it per chunk on CPU.
    weight: torch.Tensor | None
    bias: torch.Tensor | None  # fp32 (or fp64) accumulator, cast to the bias's dtype when complete


def _chunked_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    scale: torch.Tensor | None,
    softcap: float | None,
    chunk_rows: int,
    grads: _Grads | None,
) -> torch.Tensor:
    """CE of every row (fp32, or fp64 for fp64 inputs); with ``grads``, accumulates the gradients of Σ scale·CE.

    Chunk buffers are allocated once and reused (``out=``, in-place ops): a fresh multi-MB tensor per chunk
    would be page-faulted in again on every chunk on CPU.
    """
    rows, vocab = hidden.shape[0], weight.shape[0]
    compute = _compute_dtype(hidden.dtype)
    upcast = hidden.dtype != compute
    token_ce = torch.empty(rows, dtype=compute, device=hidden.device)
    chunk_rows = max(1, min(chunk_rows, rows))
    logits_buf = hidden.new_empty(chunk_rows, vocab, dtype=compute)
    raw_buf = hidden.new_empty(chunk_rows, vocab) if upcast else logits_buf  # matmul in the model's dtype
    tanh_buf = torch.empty_like(logits_buf) if softcap else None
    for start in range(0, rows, chunk_rows):
        h = hidden[start : start + chunk_rows]
        y = targets[start : start + chunk_rows, None]
        m = h.shape[0]
        raw, logits = raw_buf[:m], logits_buf[:m]
        if bias is None:
            torch.mm(h, weight.T, out=raw)
        else:
            torch.addmm(bias, h, weight.T, out=raw)
        if upcast:
            logits.copy_(raw)
        if tanh_buf is not None:  # logits = cap·tanh(z / cap)
            tanh = torch.div(logits, softcap, out=tanh_buf[:m]).tanh_()
            torch.mul(tanh, softcap, out=logits)
        target_logit = logits.gather(1, y).squeeze(1)
        row_max = logits.amax(1, keepdim=True)
        sum_exp = logits.sub_(row_max).exp_().sum(1, keepdim=True)  # logits now hold exp(z − max)
        torch.sub((sum_exp.log() + row_max).squeeze(1), target_logit, out=token_ce[start : start + m])
        if grads is None:
            continue
        row_scale = scale[start : start + m, None]
        grad = logits.mul_(row_scale / sum_exp).scatter_add_(1, y, -row_scale)  # (softmax − onehot)·scale
        if tanh_buf is not None:  # d cap·tanh(z/cap) / dz = 1 − tanh²
            grad.mul_(tanh.square_().neg_().add_(1.0))
        if grads.bias is not None:
            grads.bias.add_(grad.sum(0))
        if upcast:
            grad = raw.copy_(grad)
        if grads.hidden is not None:
            torch.mm(grad, weight, out=grads.hidden[start : start + m])
        if grads.weight is not None:
            grads.weight.addmm_(grad.T, h)
    return token_ce


class _FusedWeightedCE(torch.autograd.Function):
    """Σ scale·CE over rows; gradients come from the forward pass, the backward only scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        scale: torch.Tensor,
        softcap: float | None,
        chunk_rows: int,
        grad_enabled: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        needs = [grad_enabled and need for need in ctx.needs_input_grad[:3]]  # type: ignore[attr-defined]
        grads = _Grads(
            hidden=torch.empty_like(hidden) if needs[0] else None,
            weight=torch.zeros_like(weight) if needs[1] else None,
            bias=weight.new_zeros(weight.shape[0], dtype=_compute_dtype(weight.dtype)) if needs[2] else None,
        )
        token_ce = _chunked_ce(hidden, weight, bias, targets, scale, softcap, chunk_rows, grads)
        if grads.bias is not None and bias is not None:
            grads.bias = grads.bias.to(bias.dtype)
        ctx.grads = grads  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(token_ce)
        return (token_ce * scale).sum(), token_ce

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: torch.Tensor, _grad_ce: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads: _Grads | None = ctx.grads  # type: ignore[attr-defined]
        if grads is None:
            raise RuntimeError("the fused weighted CE can be backpropagated once (its gradients are scaled in place)")
        ctx.grads = None  # type: ignore[attr-defined]
        scaled = [
            None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in (grads.hidden, grads.weight, grads.bias)
        ]
        return (*scaled, None, None, None, None, None)


def _chunked_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    scale: torch.Tensor,
    softcap: float | None,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_enabled = torch.is_grad_enabled()
    return _FusedWeightedCE.apply(hidden, weight, bias, targets, scale, softcap, chunk_rows, grad_enabled)


def _cce_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    scale: torch.Tensor,
    softcap: float | None,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CCE's per-token losses, weighted here. ``reduction='none'`` gives a per-token backward, and
    ``filter_eps=None`` keeps every gradient block (CCE's default skips blocks whose softmax is below a
    threshold: faster, but no longer the exact gradient)."""
    from cut_cross_entropy import linear_cross_entropy

    if bias is not None:  # checked by the caller; CCE's kernels take no bias
        raise ValueError("cut-cross-entropy takes no LM-head bias")
    token_ce = linear_cross_entropy(hidden, weight, targets, softcap=softcap, reduction="none", filter_eps=None).float()
    return (token_ce * scale).sum(), token_ce.detach()


_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {"chunked": _chunked_loss, "cce": _cce_loss}


@dataclass
class LinearCEResult:
    """``loss`` = Σ w·CE / N; ``token_loss[i]`` is the CE (fp32 at least) of input row ``rows[i]``, detached."""

    loss: torch.Tensor
    rows: torch.Tensor
    token_loss: torch.Tensor


def fused_weighted_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    num_items: torch.Tensor | float,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    impl: str = "auto",
    chunk_rows: int | None = None,
    include_zero_weight: bool = False,
) -> LinearCEResult:
    """Σ_i w_i·CE(hidden_i·weightᵀ + bias, targets_i) / N over ``[M, H]`` rows, never all logits at once.

    Rows with target ``-100`` or weight 0 are skipped, so ``rows``/``token_loss`` cover the weighted rows
    only; ``include_zero_weight`` adds the CE of zero-weight rows (forward only, no gradient) for logging.
    ``num_items`` is N (a count, not clamped here). Under autocast, both operands are cast to its dtype,
    like the ``nn.Linear`` LM head would be.
    """
    if weight.dim() != 2 or hidden.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [M, H] and weight [V, H], got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden states are {hidden.dtype} but the LM head weight is {weight.dtype}")
    name = resolve_loss_impl(impl, hidden.device)
    if name == "cce" and bias is not None:  # CCE's kernels take no bias
        raise ValueError("wit loss implementation 'cce' cannot take an LM-head bias; use 'chunked' or 'auto'")
    chunk = chunk_rows or auto_chunk_rows(weight.shape[0])
    valid = targets != IGNORE_INDEX
    weighted = valid & (token_weights > 0)
    rows = weighted.nonzero().squeeze(1)
    if rows.numel() == 0:  # nothing to train: the chunked path gives 0 and zero gradients without a kernel
        name = "chunked"
    dtype = _compute_dtype(hidden.dtype)
    scale = token_weights[rows].to(dtype) / torch.as_tensor(num_items, device=hidden.device).to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        loss, token_loss = _LOSSES[name](hidden[rows], weight, bias, targets[rows], scale, softcap, chunk)
        zero_rows = (valid & ~weighted).nonzero().squeeze(1) if include_zero_weight else rows[:0]
        if zero_rows.numel():  # (none, e.g. with every role weighted: no kernel launched on an empty input)
            zero_scale = scale.new_zeros(zero_rows.shape[0])
            with torch.no_grad():
                _, zero_loss = _LOSSES[name](
                    hidden[zero_rows], weight, bias, targets[zero_rows], zero_scale, softcap, chunk
                )
            rows, token_loss = torch.cat([rows, zero_rows]), torch.cat([token_loss, zero_loss])
    return LinearCEResult(loss, rows, token_loss)


def weighted_linear_cross_entropy(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    input_ids: torch.Tensor,
    roles: torch.Tensor,
    weight_table: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    *,
    lm_head_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    impl: str = "auto",
    chunk_rows: int | None = None,
    include_zero_weight: bool = False,
    message_weights: torch.Tensor | None = None,
) -> WeightedLoss:
    """:func:`~wit_plugin.loss.weighted.weighted_token_loss` from ``[B, T, H]`` final hidden states.

    Same targets, PAD masking, normaliser and loss; the per-role stats cover the rows computed: by default
    only the tokens with weight > 0 (zero-weight roles show 0 tokens), with ``include_zero_weight`` every scored
    token, exactly as the eager path reports them with the same flag.
    """
    targets = flat_targets(input_ids, roles, weight_table, message_weights)
    n = normaliser(targets.weights, num_items_in_batch)
    result = fused_weighted_cross_entropy(
        hidden_states.reshape(-1, hidden_states.shape[-1]),
        lm_head_weight,
        targets.tokens,
        targets.weights,
        n,
        bias=lm_head_bias,
        softcap=softcap,
        impl=impl,
        chunk_rows=chunk_rows,
        include_zero_weight=include_zero_weight,
    )
    return WeightedLoss(result.loss, role_stats(result.token_loss, targets.roles[result.rows]))
