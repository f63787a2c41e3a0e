"""The evaluation engine's prefix-tree scoring and pooled hidden states against plain one-sequence forwards."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from wit_plugin.evaluation.engine import mean_hidden_states, score_tree, tree_attention


def plain(model, prompt, option) -> float:
    """log P(option | prompt) from one forward over prompt + option."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(option)])).logits[0]
    logprobs = logits[len(prompt) - 1 : len(prompt) + len(option) - 1].double().log_softmax(-1)
    return float(logprobs.gather(-1, torch.tensor(option)[:, None]).sum())


@pytest.fixture(scope="module")
def tiny():
    config = AutoConfig.for_model(
        "llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, vocab_size=50, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").double().eval()


def test_score_tree_equals_one_sequence_per_option(tiny):
    shared = [5, 6, 7, 8, 9, 10]  # a demo block several prompts start with
    prompts = [tuple(shared + [11, 12]), tuple(shared + [13]), (20, 21, 22), tuple(shared + [11, 12]), (5, 6)]
    options = [
        [(30,), (31, 32), (31, 33, 34)],  # two options that share their first token
        [(11, 12), (40,)],  # an option that walks into another prompt's tokens
        [(41, 42, 43)],
        [(30,)],  # the same prompt twice
        [(7, 8, 9), (1,)],  # a prompt that is a prefix of others
    ]
    for row_tokens in (4, 512):  # one prompt per tree, or all in one
        values = score_tree(tiny, prompts, options, row_tokens=row_tokens)
        for prompt, opts, got in zip(prompts, options, values):
            for option, value in zip(opts, got):
                assert value == pytest.approx(plain(tiny, prompt, option), abs=1e-10)


def test_score_tree_on_the_real_model_equals_a_float64_forward(model):
    reference = copy.deepcopy(model).double()
    prompts = [(1, 9690, 198, 2683, 359), (1, 9690, 198, 504), (1, 504, 4151)]
    options = [[(28, 253), (1090,)], [(9690, 198, 504)], [(28,)]]
    values = score_tree(model, prompts, options)
    for prompt, opts, got in zip(prompts, options, values):
        for option, value in zip(opts, got):
            assert value == pytest.approx(plain(reference, prompt, option), abs=1e-4)


def test_only_full_attention_models_with_a_masked_implementation_take_trees():
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 50}  # fmt: skip
    sliding = AutoModelForCausalLM.from_config(AutoConfig.for_model("mistral", sliding_window=4, **shape))
    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **shape), attn_implementation="sdpa")
    assert not tree_attention(sliding) and tree_attention(llama)
    llama.config._attn_implementation = "flash_attention_2"  # reads a 4D mask as padding: not for trees
    assert not tree_attention(llama)


def test_empty_prompts_or_continuations_are_refused(tiny):
    with pytest.raises(ValueError, match="non-empty prompts and continuations"):
        score_tree(tiny, [(1, 2)], [[()]])
    assert score_tree(tiny, [(1, 2), (3,)], [[], [(4,)]])[0] == []  # a prompt without options is fine


def test_mean_hidden_states_ignore_padding(tiny):
    rows = [(5, 6, 7), (8, 9), (10, 11, 12, 13)]
    pooled = mean_hidden_states(tiny, rows, batch_size=3, pad=0)
    for index, row in enumerate(rows):
        with torch.no_grad():
            states = tiny(torch.tensor([list(row)]), output_hidden_states=True).hidden_states
        expected = torch.stack([layer[0].mean(0) for layer in states]).numpy()
        assert pooled[index] == pytest.approx(expected, abs=1e-6)
