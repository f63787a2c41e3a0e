"""One definition per option: its checks, and every view derived from it (README, CLI, Axolotl, TRL)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from wit_plugin import options
from wit_plugin.options import OPTION_BY_NAME, OptionError

REPO = Path(__file__).resolve().parents[1]


def test_readme_yaml_reference_is_the_generated_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- options:begin -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert table == options.markdown_table()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("wit_posix_steps", 0, "wit_posix_steps must be >= 1, got 0"),
        ("wit_posix_steps", 2.5, "wit_posix_steps must be an integer"),
        ("wit_posix_steps", True, "wit_posix_steps must be an integer"),
        ("wit_loss_impl", "liger", "unknown wit_loss_impl 'liger'"),
        ("wit_crosstask_conditions", "zero,bogus", "unknown wit_crosstask_conditions 'zero,bogus'"),
        ("wit_crosstask_conditions", " , ", "must name at least one of"),
        ("wit_crosstask_chat", "yes", "wit_crosstask_chat must be true or false"),
        ("wit_prompt_weight", float("inf"), "wit_prompt_weight must be finite"),
    ],
)
def test_bad_values_name_their_key(name, value, message):
    with pytest.raises(OptionError, match=message):
        OPTION_BY_NAME[name].check(value)


def test_cross_option_rules(tmp_path):
    sets = tmp_path / "sets.jsonl"
    sets.write_text('{"prompts": ["a", "b"]}\n')
    options.check_posix({"wit_posix_prompts": str(sets), "wit_posix_steps": 5})
    with pytest.raises(OptionError, match="set without `wit_posix_prompts`"):
        options.check_posix({"wit_posix_steps": 5})
    options.check_posix({"wit_posix_steps": 100})  # the default is not "set"
    with pytest.raises(OptionError, match="`wit_crosstask_pool` without `wit_crosstask_targets`"):
        options.check_crosstask({"wit_crosstask_pool": str(sets)})
    with pytest.raises(OptionError, match="`wit_crosstask_targets`: no file at nope.jsonl"):
        options.check_crosstask({"wit_crosstask_pool": str(sets), "wit_crosstask_targets": "nope.jsonl"})
    with pytest.raises(OptionError, match="unknown wit_plugin option\\(s\\) \\['wit_promt_weight'\\]") as raised:
        options.check_known_keys({"wit_promt_weight": 1, "learning_rate": 1})
    assert "wit_promt_weight: did you mean wit_prompt_weight?" in str(raised.value)


def test_cli_flags_take_the_options_type_default_and_checks():
    parser = argparse.ArgumentParser(exit_on_error=False)
    options.add_arguments(parser, ["wit_crosstask_shots", "wit_crosstask_chat", "wit_crosstask_select"])
    parsed = parser.parse_args([])
    assert (parsed.wit_crosstask_shots, parsed.wit_crosstask_chat, parsed.wit_crosstask_select) == (1, False, "similar")
    assert parser.parse_args(["--shots", "3", "--chat"]).wit_crosstask_shots == 3
    with pytest.raises(argparse.ArgumentError, match="--shots must be >= 1, got 0"):
        parser.parse_args(["--shots", "0"])
    unset = argparse.ArgumentParser()
    options.add_arguments(unset, ["wit_preset"], unset="the config's")
    assert unset.parse_args([]).wit_preset is None


def test_frameworks_take_the_same_defaults():
    dataclasses = pytest.importorskip("dataclasses")
    trl_config = pytest.importorskip("wit_plugin.integrations.trl.config")
    args = pytest.importorskip("wit_plugin.integrations.axolotl.args")
    schema = {name: field.default for name, field in args.WITArgs.model_fields.items()}
    trl = {f.name: f.default for f in dataclasses.fields(trl_config.WITConfig) if f.name.startswith("wit_")}
    assert schema == trl == options.defaults()
