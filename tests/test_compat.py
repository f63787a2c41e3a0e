"""wit_plugin.compat: each shim on the installed stack, and where it branches on what a release has, both branches
(on small stand-ins for the library object it reads, never on a stand-in for the shim itself)."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import warnings

import pytest
import torch
from axolotl.utils.dict import DictDefault
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from wit_plugin import compat
from wit_plugin.integrations.axolotl.plugin import WITConfigError, check_config

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 97}  # fmt: skip


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **TINY)).eval()


def wrappings(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``model`` inside each wrapper unwrap_model looks through, alone and nested (torch.compile is lazy: nothing
    is compiled until a call)."""
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    return {
        "plain": model,
        "DataParallel": torch.nn.DataParallel(model),
        "torch.compile": torch.compile(model),
        "PEFT": lora,
        "compile(DataParallel(PEFT))": torch.compile(torch.nn.DataParallel(lora)),
    }


# --- unwrap_model --------------------------------------------------------------------------------------------------


def test_unwrap_model_finds_the_causal_lm_inside_every_wrapper(tiny_llama):
    for name, wrapped in wrappings(tiny_llama).items():
        assert compat.unwrap_model(wrapped) is tiny_llama, name


def test_the_fused_loss_patches_the_causal_lm_inside_a_compiled_wrapper(tiny_llama):
    from wit_plugin.loss.forward_patch import HiddenStatesForward

    patch = HiddenStatesForward(torch.compile(torch.nn.DataParallel(tiny_llama)))
    assert patch.causal_lm is tiny_llama and "forward" in tiny_llama.__dict__
    patch.remove()


# --- the KV cache's name (transformers 5.24) ---------------------------------------------------------------------


def test_cache_kwargs_and_output_cache_continue_a_forward_on_the_installed_stack(tiny_llama):
    """Prefill through the shims, then one step from the returned cache: the logits equal one full forward's, with
    no deprecation warning for the old keyword (transformers >= 5.24 warns per call)."""
    ids = torch.randint(3, TINY["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(1))
    for name, model in wrappings(tiny_llama).items():
        if "compile" in name:
            continue  # calling a compiled model compiles it (minutes on a CPU); its name was checked above
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            full = tiny_llama(ids).logits[0, -1]
            prefill = model(input_ids=ids[:, :-1], use_cache=True, **compat.cache_kwargs(model, DynamicCache()))
            cache = compat.output_cache(prefill)
            assert cache.get_seq_length() == ids.shape[1] - 1, name
            step = model(input_ids=ids[:, -1:], use_cache=True, **compat.cache_kwargs(model, cache)).logits[0, -1]
        torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


def test_cache_names_follow_what_the_output_class_and_forward_declare():
    @dataclasses.dataclass
    class Old:  # transformers < 5.24
        past_key_values: object = "old cache"

    @dataclasses.dataclass
    class New:  # transformers >= 5.24 (the old name may still resolve, as a deprecated alias)
        cache: object = "new cache"
        past_key_values = "deprecated alias"

    assert compat.output_cache(Old()) == "old cache"
    assert compat.output_cache(New()) == "new cache"
    assert compat.forward_cache_name(lambda input_ids, past_key_values=None, **kwargs: None) == "past_key_values"
    assert compat.forward_cache_name(lambda input_ids, cache=None, past_key_values=None, **kwargs: None) == "cache"


# --- logits_to_keep ---------------------------------------------------------------------------------------------


def test_logits_to_keep_through_wrappers_and_only_where_the_forward_takes_it(tiny_llama):
    for name, wrapped in wrappings(tiny_llama).items():
        assert compat.logits_to_keep(wrapped) == {"logits_to_keep": 1}, name
    ids = torch.randint(3, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        kept = tiny_llama(ids, **compat.logits_to_keep(tiny_llama)).logits
        full = tiny_llama(ids).logits
    torch.testing.assert_close(kept, full[:, -1:])

    class Custom(torch.nn.Module):  # a model class that does not take it (custom or remote code)
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    assert compat.logits_to_keep(torch.nn.DataParallel(Custom())) == {}


def test_fused_loss_model_types_are_models_of_the_installed_transformers():
    assert set(compat.FUSED_LOSS_MODEL_TYPES) <= set(CONFIG_MAPPING), "a family the installed release lacks"
    assert not {"mixtral", "qwen2_moe", "qwen3_moe"} & compat.FUSED_LOSS_MODEL_TYPES  # router loss in forward


# --- GGUF (transformers 5.20) -----------------------------------------------------------------------------------


def test_gguf_load_kwargs_dequantize_where_transformers_has_a_gguf_config(monkeypatch):
    transformers = importlib.import_module("transformers")  # the module now in sys.modules, as compat imports it
    kwargs = compat.gguf_load_kwargs()
    if hasattr(transformers, "GgufConfig"):  # >= 5.20
        assert kwargs["quantization_config"].dequantize is True
    else:
        assert kwargs == {}

    class GgufConfig:  # the 5.20 branch, on a stack that predates it
        def __init__(self, dequantize: bool) -> None:
            self.dequantize = dequantize

    # Both branches on stand-in modules: transformers >= 5.20 is a lazy module that brings back an attribute
    # deleted from it on the next lookup, so the pre-5.20 branch cannot be had by deleting GgufConfig.
    newer, older = types.ModuleType("transformers"), types.ModuleType("transformers")
    newer.GgufConfig = GgufConfig  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", newer)
    assert compat.gguf_load_kwargs()["quantization_config"].dequantize is True
    monkeypatch.setitem(sys.modules, "transformers", older)
    assert compat.gguf_load_kwargs() == {}


# --- TRL ------------------------------------------------------------------------------------------------------------


def test_trl_private_inputs_are_dropped_and_nothing_else():
    inputs = {"input_ids": 1, "labels": 2, "_prediction_loss_only": True}
    compat.pop_trl_private_inputs(inputs)
    assert inputs == {"input_ids": 1, "labels": 2}
    compat.pop_trl_private_inputs(inputs)  # TRL releases that add nothing
    assert inputs == {"input_ids": 1, "labels": 2}


def test_trl_token_divisor_is_the_tensor_parallel_size_where_trl_tracks_it():
    class Trainer:
        pass

    trainer = Trainer()
    assert compat.trl_token_divisor(trainer) == 1  # TRL 1.9: no _tp_size
    trainer._tp_size = None
    assert compat.trl_token_divisor(trainer) == 1
    trainer._tp_size = 4  # TRL 1.16 under tensor parallelism
    assert compat.trl_token_divisor(trainer) == 4


# --- Axolotl --------------------------------------------------------------------------------------------------------


def test_context_parallel_sizes_read_every_spelling():
    assert compat.axolotl_context_parallel_sizes(DictDefault({})) == {}
    cfg = DictDefault({"context_parallel_size": 2, "sequence_parallel_degree": 1, "context_parallel": {"size": 4}})
    assert compat.axolotl_context_parallel_sizes(cfg) == {
        "context_parallel_size": 2,
        "sequence_parallel_degree": 1,
        "context_parallel.size": 4,
    }


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ({"context_parallel": {"size": 2}}, "context_parallel.size"),  # Axolotl 0.21's nested form
        ({"context_parallel_size": 2}, "context_parallel_size"),
        ({"sequence_parallel_degree": 2}, "sequence_parallel_degree"),  # deprecated alias (0.19, 0.21)
    ],
)
def test_every_context_parallel_spelling_is_refused(setting, key):
    with pytest.raises(WITConfigError, match=f"`{key}` > 1: sequences split across ranks"):
        check_config(DictDefault(setting))
    check_config(DictDefault({name: {"size": 1} if name == "context_parallel" else 1 for name in setting}))


def test_sequence_len_defaults_as_axolotl_fills_it_in():
    from axolotl.utils.schemas.config import AxolotlInputConfig

    assert compat.axolotl_sequence_len(DictDefault({})) == 512  # Axolotl 0.19 and 0.21
    assert compat.axolotl_sequence_len(DictDefault({"sequence_len": 64})) == 64
    assert AxolotlInputConfig.model_fields["eval_sequence_len"].default is None  # eval falls back to sequence_len


def test_eval_sequence_len_equal_to_axolotls_default_is_fine():
    check_config(DictDefault({"excess_length_strategy": "truncate", "eval_sequence_len": 512}))  # sequence_len unset
