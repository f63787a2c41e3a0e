"""The Axolotl plugin's config handling: keys, conflicts, dataset types, strategies."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("axolotl")
from axolotl.cli.config import load_cfg
from axolotl.integrations.base import PluginManager
from axolotl.utils.dict import DictDefault

from wit_plugin.integrations.axolotl.dataset_types import WITConfigError, map_dataset_types
from wit_plugin.integrations.axolotl.plugin import check_config
from wit_plugin.integrations.axolotl.strategies import chat_template as chat_strategy
from wit_plugin.options import OptionError
from wit_plugin.roles import Role, WeightError
from wit_plugin.tagging.dropped import dropped_column

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


def test_plugin_keys_are_the_shared_option_schema():
    from wit_plugin.integrations.axolotl.args import WITArgs
    from wit_plugin.options import OPTION_BY_NAME

    fields = {name: field.default for name, field in WITArgs.model_fields.items()}
    assert fields == {name: option.default for name, option in OPTION_BY_NAME.items()}
    assert all(WITArgs.model_fields[name].description == option.help for name, option in OPTION_BY_NAME.items())


def test_valid_config_maps_the_stock_type_and_keeps_the_weights(base_cfg):
    cfg = load_cfg(DictDefault(copy.deepcopy(base_cfg)))
    assert cfg.datasets[0]["type"] == f"{STRATEGIES}.chat_template"
    assert cfg.dataset_prepared_path == str(Path(base_cfg["dataset_prepared_path"]) / "wit_tagging_v5")
    assert (cfg.wit_prompt_weight, cfg.wit_response_weight) == (0.4, 0.6)


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ({"wit_prompt_weigth": 0.4}, OptionError, "unknown wit_plugin option\\(s\\) \\['wit_prompt_weigth'\\]"),
        ({"wit_prompt_weight": -1}, WeightError, "must be >= 0"),
        ({"wit_response_weight": float("nan")}, WeightError, "must be finite"),
        ({"wit_prompt_weight": 0, "wit_response_weight": 0}, WeightError, "all wit role weights are zero"),
        ({"wit_preset": "dpo"}, WeightError, "unknown wit_preset"),
        ({"wit_loss_impl": "liger"}, ValueError, "wit_loss_impl"),
    ],
)
def test_bad_wit_keys_are_errors_that_name_the_config_file(base_cfg, tmp_path, override, error, message):
    config = tmp_path / "bad.yml"
    config.write_text(yaml.safe_dump({**copy.deepcopy(base_cfg), **override}))
    with pytest.raises(error, match=f"^config {re.escape(str(config))}: .*{message}"):
        load_cfg(str(config))


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
        ({"use_dft": True}, "`use_dft`: DFT replaces the loss"),  # Axolotl 0.21
        ({"balance_labels": True}, "`balance_labels`"),
        ({"diffusion_lm": {"noise_schedule": "linear"}}, "`diffusion_lm`"),
        ({"tensor_parallel_size": 2}, "`tensor_parallel_size` > 1: the LM head and logits split"),
        ({"train_on_inputs": True}, "`train_on_inputs`: the role weights decide"),
        ({"trainer_cls": "my.Trainer"}, "`trainer_cls`"),
        ({"wit_posix_steps": 10}, "set without `wit_posix_prompts`"),
        ({"wit_posix_prompts": "no/such/sets.jsonl"}, "`wit_posix_prompts`: no file at no/such/sets.jsonl"),
        ({"excess_length_strategy": "truncate", "eval_sequence_len": 64}, "with an `eval_sequence_len` of its own"),
        ({"wit_crosstask_pool": "no/such/pool.jsonl"}, "`wit_crosstask_pool`: no file at no/such/pool.jsonl"),
        ({"fsdp_config": {"fsdp_version": 2}, "wit_loss_impl": "chunked"}, "with FSDP: the fused loss needs"),
        (
            {"deepspeed": {"zero_optimization": {"stage": 3}}, "wit_loss_impl": "cce"},
            "with DeepSpeed ZeRO-3: the fused loss needs",
        ),
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
    map_dataset_types(cfg)  # idempotent: our own types stay
    assert cfg["datasets"][0]["type"] == f"{STRATEGIES}.{ours}"


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
    user = {"role": "user", "content": "many words " * 20, "weight": 0.5}  # its weights are a per-token column too
    features = tokenize({"messages": [user, {"role": "assistant", "content": "ok"}]})
    lengths = {len(column) for key, column in features.items() if key != "wit_dropped"}  # a per-row column
    assert len(lengths) == 1  # every per-token column cut at the same place, or none
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


@pytest.fixture
def with_plugin(monkeypatch):
    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    monkeypatch.setattr(PluginManager.get_instance(), "plugins", {"wit_plugin.WITPlugin": WITPlugin()})


def test_sharegpt_roles_map_as_in_axolotl_without_a_roles_key(tokenizer, with_plugin):
    cfg = DictDefault({"sequence_len": 256, "chat_template": "tokenizer_default"})
    ds_cfg = {
        "type": "chat_template",
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
    }
    row = {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]}
    features = chat_strategy.load(tokenizer, cfg, ds_cfg).tokenize_prompt(row)
    text = tokenizer.decode(features["input_ids"])
    assert "<|im_start|>user\nHi there<|im_end|>" in text and "<|im_start|>assistant\nHello!<|im_end|>" in text


def test_rendered_tools_reasoning_and_eot_tokens_are_tagged(tokenizer, with_plugin):
    template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content is defined %}<think>"
        "{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}[END]\n{% endfor %}"
    )
    cfg = DictDefault(
        {"sequence_len": 256, "chat_template": "jinja", "chat_template_jinja": template, "eot_tokens": ["[END]"]}
    )
    tokenize = chat_strategy.load(tokenizer, cfg, {"type": "chat_template"}).tokenize_prompt
    plain = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    thinking = [plain[0], {**plain[1], "reasoning_content": "add them"}]
    tool = {"type": "function", "function": {"name": "add"}}

    def text_of(features, role):
        return tokenizer.decode([t for t, r in zip(features["input_ids"], features["wit_roles"]) if r == role])

    features = tokenize({"messages": thinking, "tools": json.dumps([tool])})  # a JSON string, as Axolotl reads
    assert text_of(features, Role.REASONING) == "add them" and '"name": "add"' in text_of(features, Role.SYSTEM)
    assert text_of(features, Role.EOT).strip() == "[END]"  # the eot_tokens option, honoured
    for no_tools in (None, [], "[]", ""):
        assert Role.SYSTEM not in tokenize({"messages": plain, "tools": no_tools})["wit_roles"]
    assert tokenize({"messages": [{**m, "reasoning_content": None} for m in plain]})  # Arrow's None: absent


def test_a_bad_row_is_named_by_file_and_line(tokenizer, with_plugin, tmp_path):
    data = tmp_path / "rows.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}
    data.write_text(f"{json.dumps(good)}\n\n{json.dumps(bad)}\n")
    cfg = DictDefault({"sequence_len": 64, "chat_template": "tokenizer_default"})
    strategy = chat_strategy.load(tokenizer, cfg, {"type": "chat_template", "path": str(data)})
    arrow_row = {"messages": [{**m, "tool_calls": None} for m in bad["messages"]]}  # as datasets hands it over
    with pytest.raises(ValueError, match=f"^{data}:3: messages\\[1\\].role: unknown message role 'bot'"):
        strategy.tokenize_prompt(arrow_row)
    with pytest.raises(
        ValueError, match=f'^dataset {data}, row {{"messages": \\[\\]}}: .messages. must be a non-empty'
    ):
        strategy.tokenize_prompt({"messages": []})  # a row the file does not hold as such (a transform made it)


def test_a_malformed_json_line_is_named_when_the_config_is_registered(base_cfg, tmp_path):
    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    data = tmp_path / "broken.jsonl"
    data.write_text('{"messages": []}\n{"messages": [}\n')
    cfg = DictDefault({**base_cfg, "datasets": [{"path": str(data), "type": "chat_template"}]})
    with pytest.raises(ValueError, match=f"^{data}:2: not valid JSON"):
        WITPlugin().register(cfg)


def test_completion_documents_longer_than_sequence_len_become_several_rows(tokenizer, with_plugin):
    from wit_plugin.integrations.axolotl.strategies import text as text_strategy

    cfg = DictDefault({"sequence_len": 16})
    strategy = text_strategy.load(tokenizer, cfg, {"type": "completion"})
    document = " ".join(f"word{i}" for i in range(60))
    rows = strategy.tokenize_prompt({"text": [document, "short"]})
    whole = [*tokenizer(document)["input_ids"], tokenizer.eos_token_id]  # the text format closes with EOS
    assert strategy.supports_batched and all(len(ids) <= 16 for ids in rows["input_ids"])
    assert [token for ids in rows["input_ids"][:-1] for token in ids] == whole  # nothing lost, in order
    assert [len(roles) for roles in rows["wit_roles"]] == [len(ids) for ids in rows["input_ids"]]


def test_another_trainer_class_is_refused(base_cfg, monkeypatch):
    from axolotl.integrations.base import BasePlugin

    from wit_plugin.integrations.axolotl.plugin import WITPlugin

    class OwnTrainerPlugin(BasePlugin):
        def get_trainer_cls(self, cfg):
            return object

    ours = WITPlugin()
    monkeypatch.setattr(PluginManager.get_instance(), "plugins", {"ours": ours, "kd": OwnTrainerPlugin()})
    with pytest.raises(WITConfigError, match="\\['kd'\\] bring their own trainer class"):
        ours.get_trainer_cls(DictDefault(base_cfg))
    with pytest.raises(WITConfigError, match="not wit_plugin's"):
        ours.post_trainer_create(DictDefault(base_cfg), trainer=object())


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


# --- packed rows kept apart; LoRA kernels on CPU --------------------------------------------------------------


def _without_attention(cfg: dict) -> dict:
    return {key: value for key, value in cfg.items() if key != "attn_implementation"}


@pytest.mark.parametrize(
    "packing", [{"sample_packing": True}, {"sample_packing": False, "eval_sample_packing": True}], ids=str
)
def test_packing_without_an_attention_key_gets_one_that_keeps_rows_apart(base_cfg, caplog, packing):
    """Axolotl keeps the multipack collator's sequence-number attention_mask unless an attention implementation is
    set; transformers reads that mask as padding, so packed rows would see each other."""
    with caplog.at_level("WARNING"):
        cfg = load_cfg(DictDefault({**_without_attention(base_cfg), "val_set_size": 0.1, **packing}))
    assert cfg.attn_implementation == "sdpa"  # on CPU; flash-attention on CUDA when installed
    assert cfg.attn_decontaminates_packing  # Axolotl now drops the sequence-number mask
    assert [r.message for r in caplog.records if "attn_implementation=sdpa" in r.message]


def test_unpacked_runs_and_deprecated_attention_keys_are_left_alone(base_cfg):
    unpacked = load_cfg(DictDefault({**_without_attention(base_cfg), "sample_packing": False}))
    assert unpacked.attn_implementation is None
    legacy = load_cfg(DictDefault({**_without_attention(base_cfg), "sdp_attention": True}))  # Axolotl maps it
    assert legacy.attn_implementation == "sdpa" and legacy.attn_decontaminates_packing


@pytest.mark.parametrize("implementation", ["fp8", "kernels-community/some-attention"])
def test_packing_under_an_attention_that_mixes_rows_is_refused(base_cfg, implementation):
    cfg = {**base_cfg, "attn_implementation": implementation}
    with pytest.raises(WITConfigError, match="`sample_packing: true` with `attn_implementation`.*set `attn_impl"):
        load_cfg(DictDefault(cfg))


def test_schema_validator_refuses_packing_that_mixes_rows():
    """The same rule on the validated config (after Axolotl's own normalisation), as a named validator."""
    from pydantic import ValidationError

    from wit_plugin.integrations.axolotl.args import WITArgs

    class Merged(WITArgs):  # what Axolotl's merged schema gives the validator
        sample_packing: bool | None = None
        attn_implementation: str | None = None

    Merged(sample_packing=True, attn_implementation="sdpa")
    with pytest.raises(ValidationError, match="attends to the ones before it"):
        Merged(sample_packing=True, attn_implementation="fp8")


LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_linear": True}


def test_lora_kernels_are_turned_off_without_cuda(base_cfg, caplog, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING"):
        cfg = load_cfg(DictDefault({**base_cfg, **LORA}))  # Axolotl would auto-enable all four
    kernels = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
    assert [cfg[key] for key in kernels] == [False] * 4
    assert [r.message for r in caplog.records if "lora_mlp_kernel" in r.message and "set to false" in r.message]
    with pytest.raises(WITConfigError, match="`lora_qkv_kernel`: Axolotl's fused LoRA kernels need CUDA"):
        load_cfg(DictDefault({**base_cfg, **LORA, "lora_qkv_kernel": True}))


def test_every_datasets_chat_template_is_recorded(base_cfg, tokenizer, with_plugin):
    from wit_plugin.integrations.axolotl.dataset_types import tagging_record

    jinja = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    )
    second = {**base_cfg["datasets"][0], "chat_template": "jinja", "chat_template_jinja": jinja}
    cfg = load_cfg(DictDefault({**base_cfg, "datasets": [base_cfg["datasets"][0], second]}))
    first, other = (tagging_record(tokenizer, cfg, dataset) for dataset in cfg.datasets)
    assert first["options"]["chat_template"] == tokenizer.chat_template
    assert other["options"]["chat_template"] == jinja


TOOL_ROW = {
    "messages": [
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "w"}}]},
        {"role": "tool", "content": "-3"},
        {"role": "assistant", "content": "Cold.", "score": 0},
    ]
}


def test_wit_drop_unrendered_per_dataset_travels_in_the_type_and_other_wit_dataset_keys_are_errors():
    cfg = {
        "datasets": [
            {"path": "a", "type": "chat_template", "wit_drop_unrendered": True},
            {"path": "b", "type": "chat_template"},
            {"path": "c", "type": "chat_template", "wit_drop_unrendered": False},
        ],
        "wit_drop_unrendered": None,
    }
    map_dataset_types(cfg)
    kinds = [dataset["type"] for dataset in cfg["datasets"]]
    assert kinds == [f"{STRATEGIES}.chat_template_drop_unrendered"] + [f"{STRATEGIES}.chat_template"] * 2
    map_dataset_types(cfg)  # idempotent
    assert [dataset["type"] for dataset in cfg["datasets"]] == kinds
    cfg["wit_drop_unrendered"] = True  # the config's value, for datasets that set none
    map_dataset_types(cfg)
    assert [d["type"].endswith("_drop_unrendered") for d in cfg["datasets"]] == [True, True, False]
    with pytest.raises(WITConfigError, match=r"datasets\[0\]\.wit_drop_unrendred: .*did you mean wit_drop_unrendered"):
        map_dataset_types({"datasets": [{"path": "a", "type": "chat_template", "wit_drop_unrendred": True}]})
    with pytest.raises(WITConfigError, match=r"datasets\[0\]: wit_drop_unrendered must be true or false"):
        map_dataset_types({"datasets": [{"path": "a", "type": "chat_template", "wit_drop_unrendered": "yes"}]})
    with pytest.raises(WITConfigError, match=r"only chat datasets"):
        map_dataset_types({"datasets": [{"path": "a", "type": "alpaca", "wit_drop_unrendered": True}]})


def test_tool_calls_the_template_drops_are_refused_by_file_and_line_or_dropped_when_opted_in(
    tokenizer, with_plugin, tmp_path, caplog
):
    import logging

    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps(TOOL_ROW) + "\n")
    cfg = DictDefault({"sequence_len": 256, "chat_template": "chatml"})
    strategy = chat_strategy.load(tokenizer, cfg, {"type": "chat_template", "path": str(data)})
    with pytest.raises(ValueError, match=rf"^{data}:1: the chat template \(`chatml`\) does not render messages\[1\]"):
        strategy.tokenize_prompt(copy.deepcopy(TOOL_ROW))
    tokenizers_own = chat_strategy.load(tokenizer, DictDefault({"sequence_len": 256}), {"type": "chat_template"})
    with pytest.raises(ValueError, match=rf"the chat template \(the tokenizer's, {tokenizer.name_or_path}\) does not"):
        tokenizers_own.tokenize_prompt(copy.deepcopy(TOOL_ROW))
    cfg_map = {"datasets": [{"path": str(data), "type": "chat_template", "wit_drop_unrendered": True}]}
    map_dataset_types(cfg_map)
    ds_cfg = {"type": cfg_map["datasets"][0]["type"], "path": str(data)}  # what survives Axolotl's schema
    strategy = chat_strategy.load(tokenizer, cfg, ds_cfg)
    with caplog.at_level(logging.WARNING):
        features = strategy.tokenize_prompt(copy.deepcopy(TOOL_ROW))
        strategy.tokenize_prompt(copy.deepcopy(TOOL_ROW))
    assert tokenizer.decode(features["input_ids"]).count("<|im_start|>assistant") == 1
    assert features["wit_dropped"] == dropped_column(-1, ["tool_calls", "empty_turns"])  # not in cfg's datasets
    unread = [r.getMessage() for r in caplog.records if "message key 'score'" in r.getMessage()]
    assert len(unread) == 1 and f"first seen at {data}:1, messages[3].score" in unread[0]


def test_a_datasets_message_weight_field_survives_axolotls_schema(base_cfg, tokenizer):
    from axolotl.prompt_strategies import load

    base_cfg["datasets"][0]["wit_message_weight_field"] = "loss_scale"
    cfg = load_cfg(DictDefault(copy.deepcopy(base_cfg)))
    assert cfg.datasets[0]["message_property_mappings"]["weight"] == "loss_scale"
    strategy = load(cfg.datasets[0]["type"], tokenizer, cfg, cfg.datasets[0])
    assert strategy.tagger.options["weight_field"] == "loss_scale"
    row = {"messages": [{"role": "user", "content": "hi", "loss_scale": 0}, {"role": "assistant", "content": "yo"}]}
    assert 0 in strategy.tokenize_prompt(row)["wit_message_weights"]
    base_cfg["datasets"][0]["message_property_mappings"] = {"weight": "loss"}
    with pytest.raises(WITConfigError, match=r"datasets\[0\]: wit_message_weight_field 'loss_scale' and message_pro"):
        map_dataset_types(copy.deepcopy(base_cfg))


def test_the_configs_message_weight_field_is_in_the_prepared_datasets_hash(base_cfg, tokenizer):
    """A top-level ``wit_message_weight_field`` reaches every dataset that maps no weight key of its own, so the
    prepared dataset's hash changes with it: a dataset tagged under another key is tagged again, not reused with
    the old key's weights. A dataset's own key still wins."""
    from axolotl.prompt_strategies import load
    from axolotl.utils.data.shared import generate_dataset_hash_from_config

    def prepared(**top: str) -> tuple[str, DictDefault]:
        cfg = load_cfg(DictDefault({**copy.deepcopy(base_cfg), **top}))
        return generate_dataset_hash_from_config(cfg, cfg.datasets, tokenizer.name_or_path), cfg

    default, _ = prepared()
    loss_weight, cfg = prepared(wit_message_weight_field="loss_weight")
    assert len({default, loss_weight, prepared(wit_message_weight_field="loss_scale")[0]}) == 3
    strategy = load(cfg.datasets[0]["type"], tokenizer, cfg, cfg.datasets[0])
    row = {"messages": [{"role": "user", "content": "hi", "loss_weight": 0}, {"role": "assistant", "content": "yo"}]}
    assert 0 in strategy.tokenize_prompt(row)["wit_message_weights"]
    base_cfg["datasets"][0]["wit_message_weight_field"] = "own"
    _, cfg = prepared(wit_message_weight_field="loss_weight")
    assert cfg.datasets[0]["message_property_mappings"]["weight"] == "own"


def test_a_datasets_wit_drop_unrendered_survives_axolotls_schema_and_loads_its_strategy(base_cfg, tokenizer):
    from axolotl.prompt_strategies import load

    base_cfg["datasets"][0]["wit_drop_unrendered"] = True
    cfg = load_cfg(DictDefault(copy.deepcopy(base_cfg)))
    kind = cfg.datasets[0]["type"]
    assert kind == f"{STRATEGIES}.chat_template_drop_unrendered"
    strategy = load(kind, tokenizer, cfg, cfg.datasets[0])
    assert strategy.tagger.options["drop_unrendered"] is True
    assert strategy.tokenize_prompt(copy.deepcopy(TOOL_ROW))["input_ids"]


CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]


def tool_rows(count: int) -> list[dict]:
    """Rows with tool calls (some in turns with no text), tool definitions, and plain ones; SmolLM2's template
    renders none of them."""
    rows = []
    for i in range(count):
        messages = [{"role": "user", "content": f"Question {i}?"}]
        if i % 2 == 0:  # a tool-call turn with no text: dropped, and the emptied turn removed
            messages += [{"role": "assistant", "content": None, "tool_calls": [CALL]}, {"role": "tool", "content": "3"}]
        if i % 4 == 1:  # tool calls beside a text: only the calls are dropped
            messages += [{"role": "assistant", "content": f"Checking {i}.", "tool_calls": [CALL]}]
            messages += [{"role": "tool", "content": "ok"}]
        messages.append({"role": "assistant", "content": f"Answer {i}."})
        rows.append({"messages": messages, **({"tools": TOOLS} if i % 3 == 0 else {})})
    return rows


def expected_drops(rows: list[dict]) -> dict[str, int]:
    """The fields the template cannot render, counted from the data itself."""
    calls = [m for row in rows for m in row["messages"] if m.get("tool_calls")]
    return {
        "tool_calls": len(calls),
        "tools": sum(1 for row in rows if row.get("tools")),
        "content": 0,
        "reasoning_content": 0,
        "empty_turns": sum(1 for m in calls if not m["content"]),
    }


def test_dropped_fields_are_counted_exactly_with_worker_processes_and_from_the_prepared_cache(
    base_cfg, tmp_path, caplog
):
    """Axolotl's own loader and trainer set-up (no training): tagging in 2 worker processes, then a second run
    whose prepared dataset comes from the cache (the raw files are gone), record and log the fields dropped from
    the data; the column that carries them never reaches a batch."""
    import logging

    from axolotl.common.datasets import load_datasets
    from axolotl.train import setup_model_and_trainer

    from wit_plugin.training.records import RunRecordCallback

    rows = tool_rows(8)
    tools, plain = tmp_path / "tools.jsonl", tmp_path / "plain.jsonl"
    tools.write_text("".join(json.dumps(row) + "\n" for row in rows))
    plain.write_text(Path(base_cfg["datasets"][0]["path"]).read_text() * 4)  # nothing to drop
    base_cfg.update(
        dataset_num_proc=2,
        val_set_size=0.25,  # a quarter of the rows in the eval split: counted too
        datasets=[
            {"path": str(plain), "ds_type": "json", "type": "chat_template"},
            {"path": str(tools), "ds_type": "json", "type": "chat_template", "wit_drop_unrendered": True},
        ],
    )
    expected = {"dataset": "datasets[1]", **expected_drops(rows)}
    assert expected["tool_calls"] == 6 and expected["tools"] == 3 and expected["empty_turns"] == 4
    message = (
        "dropped what the chat template does not render (wit_drop_unrendered), in the prepared train and eval rows"
    )
    for run in ("tagged in workers", "from the prepared cache"):
        cfg = load_cfg(DictDefault(copy.deepcopy(base_cfg)))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            meta = load_datasets(cfg=cfg)
            trainer = setup_model_and_trainer(cfg, meta)[0]
        record = next(c.record for c in trainer.callback_handler.callbacks if isinstance(c, RunRecordCallback))
        assert record["dropped_unrendered"] == [expected], run
        logged = [r.getMessage() for r in caplog.records if "dropped what the chat template" in r.getMessage()]
        assert logged == [f"wit: datasets[1]: {message}: 6 tool_calls, 3 tools, 4 empty_turns"], run
        batch = next(iter(trainer.get_train_dataloader()))  # packed: Axolotl keeps unknown columns
        assert "wit_dropped" not in batch and "wit_roles" in batch  # the collator took it out
        tools.unlink(missing_ok=True)  # the second run can only read the prepared dataset
        plain.unlink(missing_ok=True)
