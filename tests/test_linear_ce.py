"""The fused (chunked) weighted loss against the float64 formula and the eager path on materialised logits."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from wit_plugin.loss import linear_ce
from wit_plugin.loss.linear_ce import (
    MAX_CHUNK_ROWS,
    auto_chunk_rows,
    fused_weighted_cross_entropy,
    resolve_loss_impl,
    weighted_linear_cross_entropy,
)
from wit_plugin.loss.weighted import weighted_token_loss
from wit_plugin.roles import Role, RoleWeights

B, T, H, V = 2, 45, 24, 293
TABLE = RoleWeights(template=0.0, system=0.4, instruction=0.0, response=1.0, eot=0.6).table()


def make_batch(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Two rows, each packing two sequences: PAD at each sequence start and as trailing padding."""
    gen = torch.Generator().manual_seed(seed)
    roles = torch.randint(0, int(Role.PAD), (B, T), generator=gen)
    roles[:, 0] = Role.PAD
    roles[:, 20] = Role.PAD  # second packed sequence starts here
    roles[1, -6:] = Role.PAD  # padding
    return {
        "hidden": torch.randn(B, T, H, generator=gen).to(dtype),
        "weight": (torch.randn(V, H, generator=gen) / H**0.5).to(dtype),
        "bias": torch.randn(V, generator=gen).to(dtype),
        "input_ids": torch.randint(0, V, (B, T), generator=gen),
        "roles": roles,
    }


def reference(batch: dict[str, torch.Tensor], n: float, bias: bool = False, softcap: float | None = None):
    """Float64 loss and analytic gradients: dL/dz = (softmax(z) − onehot(y))·w/N."""
    h, w = batch["hidden"].double(), batch["weight"].double()
    targets, roles = batch["input_ids"][:, 1:].reshape(-1), batch["roles"][:, 1:].reshape(-1)
    x = h[:, :-1].reshape(-1, H)
    token_w = torch.where(roles == Role.PAD, 0.0, TABLE.double()[roles])
    raw = x @ w.T + (batch["bias"].double() if bias else 0.0)
    z = softcap * torch.tanh(raw / softcap) if softcap else raw
    ce = torch.logsumexp(z, 1) - z.gather(1, targets[:, None]).squeeze(1)
    grad_z = (torch.softmax(z, 1) - torch.nn.functional.one_hot(targets, V)) * (token_w / n)[:, None]
    if softcap:
        grad_z = grad_z * (1 - torch.tanh(raw / softcap) ** 2)
    grad_h = torch.zeros_like(h)
    grad_h[:, :-1] = (grad_z @ w).reshape(B, T - 1, H)
    return (token_w * ce).sum() / n, grad_h, grad_z.T @ x, grad_z.sum(0)


def fused(batch: dict[str, torch.Tensor], bias: bool = False, **kwargs):
    """Loss and gradients (hidden, weight, bias) of the fused path on fresh leaf copies of the batch."""
    h = batch["hidden"].clone().requires_grad_()
    w = batch["weight"].clone().requires_grad_()
    b = batch["bias"].clone().requires_grad_() if bias else None
    result = weighted_linear_cross_entropy(h, w, batch["input_ids"], batch["roles"], TABLE, lm_head_bias=b, **kwargs)
    result.loss.backward()
    return result, h.grad, w.grad, None if b is None else b.grad


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Close relative to the tensor's scale, so entries near 0 do not demand impossible precision."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all()
    assert (actual - expected).abs().max() <= rel * expected.abs().max(), (actual - expected).abs().max()


def weighted_count(batch: dict[str, torch.Tensor]) -> int:
    roles = batch["roles"][:, 1:]
    return int((TABLE[roles] > 0).sum())


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, None])
def test_gradients_match_float64_formula(chunk_rows: int | None) -> None:
    batch = make_batch()
    n = weighted_count(batch)
    loss, grad_h, grad_w, _ = reference(batch, n)
    result, got_h, got_w, _ = fused(batch, chunk_rows=chunk_rows)
    assert_rel_close(result.loss, loss, 1e-5)
    assert_rel_close(got_h, grad_h, 1e-5)
    assert_rel_close(got_w, grad_w, 1e-5)
    assert got_h[:, -1].abs().max() == 0  # the last position has no target


def test_bias_and_softcap_gradients() -> None:
    batch = make_batch(1)
    n = weighted_count(batch)
    loss, grad_h, grad_w, grad_b = reference(batch, n, bias=True, softcap=5.0)
    result, got_h, got_w, got_b = fused(batch, bias=True, softcap=5.0, chunk_rows=10)
    assert_rel_close(result.loss, loss, 1e-5)
    for got, expected in ((got_h, grad_h), (got_w, grad_w), (got_b, grad_b)):
        assert_rel_close(got, expected, 1e-5)


def test_backward_scales_by_the_incoming_gradient() -> None:
    batch = make_batch(2)
    h = batch["hidden"].clone().requires_grad_()
    w = batch["weight"].clone().requires_grad_()
    result = weighted_linear_cross_entropy(h, w, batch["input_ids"], batch["roles"], TABLE, chunk_rows=16)
    (3.0 * result.loss).backward()
    _, grad_h, grad_w, _ = reference(batch, weighted_count(batch))
    assert_rel_close(h.grad, 3.0 * grad_h, 1e-5)
    assert_rel_close(w.grad, 3.0 * grad_w, 1e-5)


@pytest.mark.parametrize("include_zero_weight", [False, True])
def test_matches_eager_path_and_its_role_stats(include_zero_weight: bool) -> None:
    batch = make_batch(3)
    eager = weighted_token_loss(batch["hidden"] @ batch["weight"].T, batch["input_ids"], batch["roles"], TABLE)
    result, *_ = fused(batch, chunk_rows=9, include_zero_weight=include_zero_weight)
    torch.testing.assert_close(result.loss, eager.loss, rtol=1e-5, atol=0)
    computed = TABLE > 0 if not include_zero_weight else torch.arange(len(TABLE)) != Role.PAD
    assert (result.stats.tokens == torch.where(computed, eager.stats.tokens, 0)).all()
    torch.testing.assert_close(
        result.stats.loss_sum, torch.where(computed, eager.stats.loss_sum, 0.0), rtol=1e-5, atol=1e-4
    )
    assert result.stats.tokens[Role.INSTRUCTION] == (eager.stats.tokens[Role.INSTRUCTION] if include_zero_weight else 0)


def test_trainer_normaliser_is_used_as_given() -> None:
    batch = make_batch(4)
    eager = weighted_token_loss(batch["hidden"] @ batch["weight"].T, batch["input_ids"], batch["roles"], TABLE, 500)
    result, *_ = fused(batch, num_items_in_batch=torch.tensor(500))
    torch.testing.assert_close(result.loss, eager.loss, rtol=1e-5, atol=0)


def test_pad_targets_are_never_scored_whatever_the_table_says() -> None:
    batch = make_batch(12)
    expected, *_ = fused(batch)
    h, w = batch["hidden"], batch["weight"]
    table = TABLE.clone()
    table[Role.PAD] = 5.0
    result = weighted_linear_cross_entropy(h, w, batch["input_ids"], batch["roles"], table)
    torch.testing.assert_close(result.loss, expected.loss)
    assert result.stats.tokens[Role.PAD] == 0


@pytest.mark.parametrize("roles_fill", [Role.PAD, Role.INSTRUCTION])
def test_nothing_to_train_gives_zero_loss_and_zero_grads(roles_fill: Role) -> None:
    batch = make_batch(5)
    batch["roles"] = torch.full_like(batch["roles"], int(roles_fill))  # all padding, or all weight 0
    result, grad_h, grad_w, _ = fused(batch)
    assert result.loss.item() == 0.0
    assert grad_h is not None and grad_w is not None
    assert (grad_h == 0).all() and (grad_w == 0).all()
    assert result.stats.tokens.sum() == 0


def test_bf16_hidden_states_close_to_fp32() -> None:
    batch32 = make_batch(6)
    batch16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch32.items()}
    result32, h32, w32, _ = fused(batch32, chunk_rows=11)
    result16, h16, w16, _ = fused(batch16, chunk_rows=11)
    assert h16.dtype == w16.dtype == torch.bfloat16
    assert result16.loss.dtype == torch.float32
    assert_rel_close(result16.loss, result32.loss, 2e-2)
    assert_rel_close(h16, h32, 3e-2)
    assert_rel_close(w16, w32, 3e-2)


def test_autocast_runs_the_head_in_the_autocast_dtype() -> None:
    batch = make_batch(7)
    h = batch["hidden"].clone().requires_grad_()
    w = batch["weight"].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = weighted_linear_cross_entropy(h, w, batch["input_ids"], batch["roles"], TABLE)
    result.loss.backward()
    loss, _, grad_w, _ = reference(batch, weighted_count(batch))
    assert h.grad.dtype == w.grad.dtype == torch.float32
    assert_rel_close(result.loss, loss, 2e-2)
    assert_rel_close(w.grad, grad_w, 3e-2)
    assert (result.loss - loss).abs() > 1e-6  # really computed in bf16, not silently in fp32


def test_gradient_accumulation_with_a_global_normaliser_sums_to_one_batch() -> None:
    first, second = make_batch(8), make_batch(9)
    second["weight"] = first["weight"]
    whole = {k: torch.cat([first[k], second[k]]) if k not in ("weight", "bias") else first[k] for k in first}
    n = weighted_count(whole)
    w = first["weight"].clone().requires_grad_()
    hiddens = []
    for part in (first, second):
        h = part["hidden"].clone().requires_grad_()
        weighted_linear_cross_entropy(h, w, part["input_ids"], part["roles"], TABLE, n, chunk_rows=13).loss.backward()
        hiddens.append(h.grad)
    _, grad_h, grad_w, _ = fused(whole, num_items_in_batch=n, chunk_rows=13)
    assert_rel_close(w.grad, grad_w, 1e-5)
    assert_rel_close(torch.cat(hiddens), grad_h, 1e-5)


def test_rows_api_skips_zero_weight_and_ignored_rows() -> None:
    gen = torch.Generator().manual_seed(10)
    hidden, weight = torch.randn(12, H, generator=gen), torch.randn(V, H, generator=gen)
    targets = torch.randint(0, V, (12,), generator=gen)
    targets[[0, 5]] = -100
    token_weights = torch.tensor([1.0, 0, 2, 0, 1, 1, 0, 0.5, 1, 1, 0, 1])
    result = fused_weighted_cross_entropy(hidden, weight, targets, token_weights, 7)
    assert result.rows.tolist() == [2, 4, 7, 8, 9, 11]
    everything = fused_weighted_cross_entropy(hidden, weight, targets, token_weights, 7, include_zero_weight=True)
    assert sorted(everything.rows.tolist()) == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets.clamp(min=0), reduction="none")
    torch.testing.assert_close(everything.token_loss, expected[everything.rows])
    torch.testing.assert_close(everything.loss, result.loss)


def test_no_grad_evaluation_builds_no_graph() -> None:
    batch = make_batch(11)
    h = batch["hidden"].clone().requires_grad_()
    with torch.no_grad():
        result = weighted_linear_cross_entropy(h, batch["weight"], batch["input_ids"], batch["roles"], TABLE)
    eager = weighted_token_loss(batch["hidden"] @ batch["weight"].T, batch["input_ids"], batch["roles"], TABLE)
    assert result.loss.grad_fn is None
    torch.testing.assert_close(result.loss, eager.loss, rtol=1e-5, atol=0)


def test_cce_path_weights_cce_per_token_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    """CCE needs CUDA: a stand-in with its signature checks what the wrapper asks of it and does with it."""
    calls: list[dict[str, object]] = []

    def linear_cross_entropy(
        e: torch.Tensor,
        c: torch.Tensor,
        targets: torch.Tensor,
        softcap: float | None = None,
        reduction: str = "mean",
        **kwargs: object,
    ) -> torch.Tensor:
        calls.append({"reduction": reduction, "softcap": softcap, **kwargs})
        assert e.shape[0] > 0, "CCE's kernels are never launched on an empty input"
        return torch.nn.functional.cross_entropy(e @ c.T, targets, reduction=reduction)

    monkeypatch.setitem(sys.modules, "cut_cross_entropy", SimpleNamespace(linear_cross_entropy=linear_cross_entropy))
    monkeypatch.setattr(linear_ce, "resolve_loss_impl", lambda name, device: "cce")
    batch = make_batch(13)
    loss, grad_h, grad_w, _ = reference(batch, weighted_count(batch))
    result, got_h, got_w, _ = fused(batch, impl="cce")
    assert calls == [{"reduction": "none", "softcap": None, "filter_eps": None}]  # exact gradients, no filtering
    assert_rel_close(result.loss, loss, 1e-5)
    assert_rel_close(got_h, grad_h, 1e-5)
    assert_rel_close(got_w, grad_w, 1e-5)
    every_row = torch.ones(batch["hidden"].shape[1])  # all weighted: no zero-weight rows to log
    targets = batch["input_ids"][0].roll(-1)
    logged = fused_weighted_cross_entropy(
        batch["hidden"][0], batch["weight"], targets, every_row, 1, impl="cce", include_zero_weight=True
    )
    assert len(calls) == 2 and logged.rows.numel() == every_row.numel()
    bias = torch.zeros(batch["weight"].shape[0])  # CCE's kernels take no bias
    with pytest.raises(ValueError, match="'cce' cannot take an LM-head bias"):
        fused_weighted_cross_entropy(batch["hidden"][0], batch["weight"], targets, every_row, 1, bias=bias, impl="cce")


def test_resolve_loss_impl() -> None:
    assert resolve_loss_impl("auto", "cpu") == "chunked"
    assert resolve_loss_impl("auto", "cuda") == "chunked"  # cce only when asked for (measured: README, GPU check)
    assert resolve_loss_impl("chunked", torch.device("cpu")) == "chunked"
    with pytest.raises(ValueError, match="unknown wit_loss_impl 'liger'; choose from auto, chunked, cce, eager"):
        resolve_loss_impl("liger", "cpu")
    with pytest.raises(ValueError, match="wit_loss_impl 'eager' computes the loss from logits"):
        resolve_loss_impl("eager", "cpu")
    with pytest.raises(ValueError, match="'cce' needs CUDA"):
        resolve_loss_impl("cce", "cpu")


def test_auto_chunk_rows_bounds_the_chunk_memory() -> None:
    assert auto_chunk_rows(49_152) == MAX_CHUNK_ROWS  # small vocabulary: enough rows for efficient matmuls
    rows = auto_chunk_rows(128_256, chunk_bytes=64 * 2**20)
    assert rows * 128_256 * 4 <= 64 * 2**20 < (rows + 1) * 128_256 * 4
    assert auto_chunk_rows(10**9) == 1
