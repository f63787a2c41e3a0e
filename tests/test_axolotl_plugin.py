"""The Axolotl plugin's config handling: keys, conflicts, dataset types, strategies."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("axolotl")
from axolotl.cli.config import load_cfg
from axolotl.integrations.base import PluginManager
from axolotl.utils.dict import DictDefault

from wit_plugin.integrations.axolotl.plugin import WITConfigError, check_config, map_dataset_types
from wit_plugin.integrations.axolotl.strategies import chat_template as chat_strategy
from wit_plugin.roles import Role, WeightError

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = "wit_plugin.integrations.axolotl.strategies"


@pytest.fixture
def base_cfg(model_path, tmp_path):
    cfg = yaml.safe_load((REPO / "yaml_examples" / "wit_smollm2_cpu.yml").read_text())
    data = tmp_path / "rows.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    cfg.update(
        base_model=str(model_path), output_dir=str(tmp_path / "out"), dataset_prepared_path=str(tmp_path / "prepared")
    )
    cfg["datasets"][0]["path"] = str(data)
    return cfg


def test_plugin_keys_are_the_shared_option_keys():
    from wit_plugin.evaluation.callback import POSIX_KEYS
    from wit_plugin.integrations.axolotl.args import WIT_KEYS
    from wit_plugin.roles import WEIGHT_KEYS
    from wit_plugin.trainer import TRAINING_KEYS

    assert {*WEIGHT_KEYS, *TRAINING_KEYS, *POSIX_KEYS} == WIT_KEYS


def test_valid_config_maps_the_stock_type_and_keeps_the_weights(base_cfg):
    cfg = load_cfg(DictDefault(copy.deepcopy(base_cfg)))
    assert cfg.datasets[0]["type"] == f"{STRATEGIES}.chat_template"
    assert (cfg.wit_prompt_weight, cfg.wit_response_weight) == (0.4, 0.6)


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ({"wit_prompt_weigth": 0.4}, WITConfigError, "unknown wit_plugin option\\(s\\) \\['wit_prompt_weigth'\\]"),
        ({"wit_prompt_weight": -1}, WeightError, "must be >= 0"),
        ({"wit_response_weight": float("nan")}, WeightError, "must be finite"),
        ({"wit_prompt_weight": 0, "wit_response_weight": 0}, WeightError, "all wit role weights are zero"),
        ({"wit_preset": "dpo"}, WeightError, "unknown wit_preset"),
        ({"wit_loss_impl": "liger"}, ValueError, "wit_loss_impl"),
    ],
)
def test_bad_wit_keys_are_errors(base_cfg, override, error, message):
    with pytest.raises(error, match=message):
        load_cfg(DictDefault({**copy.deepcopy(base_cfg), **override}))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rl": "dpo"}, "`rl`: RL/preference training"),
        ({"rl": "orpo"}, "`rl`: RL/preference training"),
        ({"orpo_alpha": 0.1}, "`orpo_alpha`"),
        ({"reward_model": True}, "`reward_model`"),
        ({"process_reward_model": True}, "`process_reward_model`"),
        ({"liger_fused_linear_cross_entropy": True}, "Liger's fused linear cross-entropy"),
        ({"cut_cross_entropy": True}, "cut_cross_entropy bypasses"),
        (
            {"plugins": ["wit_plugin.WITPlugin", "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]},
            "plugin `axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin` replaces the loss",
        ),
        ({"plugins": ["wit_plugin.WITPlugin", "axolotl.integrations.liger.LigerPlugin"]}, "LigerPlugin` replaces"),
        ({"chunked_cross_entropy": True}, "chunked_cross_entropy"),
        ({"use_eaft": True}, "EAFT"),
        ({"context_parallel_size": 2}, "`context_parallel_size` > 1"),
    ],
)
def test_options_that_bypass_the_weights_are_errors(base_cfg, override, message):
    with pytest.raises(WITConfigError, match=message):
        check_config(DictDefault({**base_cfg, **override}))


@pytest.mark.parametrize(
    ("stock", "ours"),
    [
        ("chat_template", "chat_template"),
        (None, "chat_template"),
        ("alpaca", "alpaca"),
        ("completion", "text"),
        (f"{STRATEGIES}.prompt_completion", "prompt_completion"),
    ],
)
def test_stock_dataset_types_map_to_role_tagging_strategies(stock, ours):
    cfg = {"datasets": [{"path": "x", "type": stock}], "test_datasets": [{"path": "y", "type": stock}]}
    map_dataset_types(cfg)
    assert cfg["datasets"][0]["type"] == cfg["test_datasets"][0]["type"] == f"{STRATEGIES}.{ours}"


@pytest.mark.parametrize("kind", ["sharegpt", "alpaca_chat.load_qa", "chat_template.argilla", {"field": "x"}])
def test_dataset_types_we_cannot_tag_are_errors(kind):
    with pytest.raises(WITConfigError, match="cannot be role-tagged"):
        map_dataset_types({"datasets": [{"path": "x", "type": kind}]})


def test_strategies_refuse_to_run_without_the_plugin(tokenizer, monkeypatch):
    monkeypatch.setattr(PluginManager.get_instance(), "plugins", {})
    with pytest.raises(RuntimeError, match="add `plugins: \\[wit_plugin.WITPlugin\\]`"):
        chat_strategy.load(tokenizer, DictDefault({"sequence_len": 64}), {"type": "chat_template"})


@pytest.mark.parametrize("strategy", ["truncate", "drop"])
def test_excess_length_truncate_cuts_roles_with_tokens(tokenizer, monkeypatch, strategy):
    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    monkeypatch.setattr(PluginManager.get_instance(), "plugins", {"wit_plugin.WITPlugin": WITPlugin()})
    cfg = DictDefault({"sequence_len": 24, "excess_length_strategy": strategy, "chat_template": "tokenizer_default"})
    tokenize = chat_strategy.load(tokenizer, cfg, {"type": "chat_template"}).tokenize_prompt
    row = {"messages": [{"role": "user", "content": "many words " * 20}, {"role": "assistant", "content": "ok"}]}
    features = tokenize(row)
    lengths = {len(column) for column in features.values()}
    assert len(lengths) == 1  # every column cut at the same place, or none
    assert lengths == ({24} if strategy == "truncate" else {len(features["input_ids"])})
    if strategy == "drop":
        assert len(features["input_ids"]) > 24 and Role.RESPONSE in features["wit_roles"]


def test_superseded_and_unsupported_dataset_options(tokenizer, monkeypatch, caplog):
    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    monkeypatch.setattr(PluginManager.get_instance(), "plugins", {"wit_plugin.WITPlugin": WITPlugin()})
    cfg = DictDefault({"sequence_len": 64, "chat_template": "tokenizer_default"})
    with caplog.at_level("WARNING"):
        chat_strategy.load(tokenizer, cfg, {"type": "chat_template", "roles_to_train": ["assistant"]})
    assert "['roles_to_train'] are ignored" in caplog.text
    with pytest.raises(ValueError, match="\\['split_thinking'\\] are not supported"):
        chat_strategy.load(tokenizer, cfg, {"type": "chat_template", "split_thinking": True})


@pytest.mark.parametrize("example", sorted((REPO / "yaml_examples").glob("*.yml")), ids=lambda p: p.name)
def test_yaml_examples_pass_the_plugins_checks(example, base_cfg):
    cfg = yaml.safe_load(example.read_text())
    assert "wit_plugin.WITPlugin" in cfg["plugins"]
    check_config(DictDefault(cfg))
    map_dataset_types(cfg)
    assert all(d["type"].startswith(STRATEGIES) for d in cfg["datasets"])
    if example.name.endswith("_cpu.yml"):  # fully validated by Axolotl on this machine too
        cfg.update({k: base_cfg[k] for k in ("base_model", "output_dir", "dataset_prepared_path", "datasets")})
        load_cfg(DictDefault(cfg))


def test_posix_callback_is_added_when_prompts_are_configured(tmp_path):
    from wit_plugin.evaluation.callback import POSIXCallback
    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    prompts = tmp_path / "sets.jsonl"
    prompts.write_text('{"prompts": ["Name a colour.", "Name a colour please."]}\n')
    assert WITPlugin().add_callbacks_post_trainer(DictDefault({}), trainer=None) == []
    (callback,) = WITPlugin().add_callbacks_post_trainer(
        DictDefault({"wit_posix_prompts": str(prompts), "wit_posix_steps": 5}), trainer=None
    )
    assert isinstance(callback, POSIXCallback) and callback.every_n_steps == 5 and len(callback.prompt_sets) == 1
