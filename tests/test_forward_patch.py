"""The hidden-states forward: same numbers as the model's own logits, through PEFT, and the fused loss on top."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from types import MethodType

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from wit_plugin.loss.forward_patch import HiddenStatesForward, HiddenStatesOutput, LMHead
from wit_plugin.loss.linear_ce import weighted_linear_cross_entropy
from wit_plugin.loss.weighted import weighted_token_loss
from wit_plugin.roles import Role, RoleWeights

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 97}  # fmt: skip


def apply_head(hidden: torch.Tensor, head: LMHead) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, head.weight, head.bias)
    return head.softcap * torch.tanh(logits / head.softcap) if head.softcap else logits


def batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, :3] = 0  # left padding
    return {"input_ids": torch.randint(3, vocab, (2, 12), generator=gen), "attention_mask": attention_mask}


@pytest.fixture(scope="module")
def smollm2(model_path: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


def test_hidden_states_times_head_are_the_models_logits(smollm2: nn.Module) -> None:
    inputs = batch(smollm2.config.vocab_size)
    with torch.no_grad():
        logits = smollm2(**inputs).logits
        patch = HiddenStatesForward(smollm2)
        try:
            with patch.enabled() as head:
                out = smollm2(**inputs)
            assert "logits" not in out
            assert inspect.signature(smollm2.forward) == inspect.signature(type(smollm2).forward.__get__(smollm2))
            torch.testing.assert_close(apply_head(out.last_hidden_state, head), logits, rtol=1e-5, atol=1e-4)
            assert head.weight is smollm2.get_input_embeddings().weight  # tied, so its gradient is shared
            torch.testing.assert_close(smollm2(**inputs).logits, logits)  # outside the block: logits again
        finally:
            patch.remove()
    assert "forward" not in smollm2.__dict__


def test_fused_loss_on_hidden_states_matches_eager_loss_and_grads(smollm2: nn.Module) -> None:
    """In float64, so that the two summation orders agree to far below any real difference (in float32 the
    embedding gradient's largest entries differ by ~1e-4 relative between them)."""
    smollm2 = copy.deepcopy(smollm2).double()
    inputs = batch(smollm2.config.vocab_size, seed=1)
    roles = torch.full_like(inputs["input_ids"], int(Role.INSTRUCTION))
    roles[:, 7:] = Role.RESPONSE
    roles[1, :4] = Role.PAD  # padding and the first real token
    table = RoleWeights.preset("wit").table()
    probe = smollm2.model.layers[-1].mlp.down_proj.weight
    embed = smollm2.get_input_embeddings().weight

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.clone() for g in torch.autograd.grad(loss, [probe, embed])]

    eager = weighted_token_loss(smollm2(**inputs).logits, inputs["input_ids"], roles, table)
    patch = HiddenStatesForward(smollm2)
    try:
        with patch.enabled() as head:
            hidden = smollm2(**inputs).last_hidden_state
        fused = weighted_linear_cross_entropy(hidden, head.weight, inputs["input_ids"], roles, table, chunk_rows=5)
    finally:
        patch.remove()
    torch.testing.assert_close(fused.loss, eager.loss, rtol=1e-10, atol=0)
    for got, expected in zip(grads(fused.loss), grads(eager.loss)):
        assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()


def test_works_through_peft_but_refuses_an_adapted_head(smollm2: nn.Module) -> None:
    peft = pytest.importorskip("peft")
    inputs = batch(smollm2.config.vocab_size, seed=2)
    lora = peft.get_peft_model(smollm2, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    try:
        with torch.no_grad():
            logits = lora(**inputs).logits
            patch = HiddenStatesForward(lora)
            with patch.enabled() as head:
                hidden = lora(**inputs).last_hidden_state
            patch.remove()
        torch.testing.assert_close(apply_head(hidden, head), logits, rtol=1e-5, atol=1e-4)
    finally:
        lora.unload()
    for config in (peft.LoraConfig(r=4, target_modules=["lm_head"]), peft.LoraConfig(r=4, modules_to_save=["lm_head"])):
        adapted = peft.get_peft_model(smollm2, config)
        try:
            with pytest.raises(ValueError, match="not a plain nn.Linear"):
                HiddenStatesForward(adapted)
        finally:
            adapted.unload()


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("llama", {}),
        ("mistral", {}),
        ("qwen2", {}),
        ("qwen3", {}),
        ("gemma", {}),
        ("gemma2", {"final_logit_softcapping": 2.0}),
        ("gemma3_text", {"final_logit_softcapping": 2.0}),
    ],
)
def test_supported_families(model_type: str, extra: dict[str, float]) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **TINY, **extra)).eval()
    inputs = batch(TINY["vocab_size"])
    patch = HiddenStatesForward(model)
    with torch.no_grad():
        logits = model(**inputs).logits
        with patch.enabled() as head:
            hidden = model(**inputs).last_hidden_state
    assert head.softcap == extra.get("final_logit_softcapping")
    torch.testing.assert_close(apply_head(hidden, head), logits, rtol=1e-5, atol=1e-5)


def test_survives_a_forward_wrapper_installed_later() -> None:
    """Accelerate's mixed precision re-wraps the function of the instance forward it finds, as done here."""
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **TINY)).eval()
    patch = HiddenStatesForward(model)
    calls = []

    def wrapped(module: nn.Module, *args: object, **kwargs: object) -> object:
        calls.append(module)
        return inner(module, *args, **kwargs)

    inner = model.forward.__func__
    model.forward = MethodType(wrapped, model)
    inputs = batch(TINY["vocab_size"])
    with torch.no_grad(), patch.enabled():
        out = model(**inputs)
    assert isinstance(out, HiddenStatesOutput) and calls == [model]
    with torch.no_grad():
        assert model(**inputs).logits.shape == (2, 12, TINY["vocab_size"])


def test_a_deep_copy_runs_its_own_weights_and_switch() -> None:
    """EMA or reference copies of a patched model must not call back into the original."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **TINY)).eval()
    patch = HiddenStatesForward(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.zero_()
        inputs = batch(TINY["vocab_size"])
        assert twin(**inputs).logits.abs().max() == 0 and model(**inputs).logits.abs().max() > 0
        with patch.enabled():
            assert isinstance(model(**inputs), HiddenStatesOutput)
            assert not isinstance(twin(**inputs), HiddenStatesOutput)  # the copy's switch is its own


def test_labels_and_unsupported_models_are_refused() -> None:
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **TINY))
    patch = HiddenStatesForward(model)
    inputs = batch(TINY["vocab_size"])
    with patch.enabled(), pytest.raises(ValueError, match="computes no loss"):
        model(**inputs, labels=inputs["input_ids"])
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        HiddenStatesForward(gpt2)
