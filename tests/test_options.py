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
    assert "valid:" not in str(raised.value)  # the guess says it; the whole list only where nothing is close
    with pytest.raises(OptionError, match="; valid: \\['wit_crosstask_batch_size'"):
        options.check_known_keys({"wit_zzz": 1})


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


def _setup_wit(**kwargs):
    from wit_plugin.roles import RoleWeights
    from wit_plugin.training.mixin import WITTrainerMixin

    WITTrainerMixin().setup_wit(RoleWeights(), **kwargs)  # refused before the trainer's state is read


def _resolve_loss_impl(value):
    from wit_plugin.loss.linear_ce import resolve_loss_impl

    return resolve_loss_impl(value, "cpu")


def _option_scores(value):
    from wit_plugin.evaluation.engine import option_scores

    return option_scores([-1.0, -2.0], [1, 2], value)


def _posix(**kwargs):
    from wit_plugin.evaluation.posix import evaluate_posix

    return evaluate_posix(None, [["a", "b"]], **kwargs)  # refused before any model work


def _posix_settings(key, value):
    from wit_plugin.evaluation.posix import POSIXSettings

    return POSIXSettings.from_options({key: value})


def _psi(value):
    from wit_plugin.evaluation.posix import psi

    return psi([[0.0, -1.0], [-1.0, 0.0]], [1, 1], value)


@pytest.mark.parametrize(
    ("name", "value", "entry"),
    [
        ("wit_role_metrics", "every", lambda value: _setup_wit(role_metrics=value)),
        ("wit_role_metrics", None, lambda value: _setup_wit(role_metrics=value)),
        ("wit_loss_impl", "liger", lambda value: _setup_wit(loss_impl=value)),
        ("wit_loss_impl", "liger", _resolve_loss_impl),
        ("wit_crosstask_scoring", "median", _option_scores),
        ("wit_crosstask_scoring", None, _option_scores),
        ("wit_posix_psi", "eq1", _psi),
        ("wit_posix_psi", "eq1", lambda value: _posix(psi_definition=value)),
        ("wit_posix_max_new_tokens", 0, lambda value: _posix(max_new_tokens=value)),
        ("wit_posix_batch_size", 0, lambda value: _posix(batch_size=value)),
        ("wit_posix_psi", "eq1", lambda value: _posix_settings("wit_posix_psi", value)),
        ("wit_posix_batch_size", 2.5, lambda value: _posix_settings("wit_posix_batch_size", value)),
    ],
    ids=[
        "setup_wit",
        "setup_wit-unset",
        "setup_wit-loss_impl",
        "resolve_loss_impl",
        "option_scores",
        "option_scores-unset",
        "psi",
        "evaluate_posix-psi",
        "evaluate_posix-max_new_tokens",
        "evaluate_posix-batch_size",
        "POSIXSettings-psi",
        "POSIXSettings-batch_size",
    ],
)
def test_values_passed_as_arguments_get_the_options_own_check(name, value, entry):
    """Every entry point that takes an option's value as an argument refuses a bad one with the option's message
    (its name, its allowed values), not a list and text of its own."""
    pytest.importorskip("torch")
    with pytest.raises(OptionError) as expected:
        options.check(name, value)
    assert name in str(expected.value)
    with pytest.raises(OptionError) as raised:
        entry(value)
    assert str(raised.value) == str(expected.value)


def test_check_refuses_none_only_where_the_option_has_a_default():
    assert options.check("wit_crosstask_limit", None) is None  # unset: every target
    assert options.check("wit_crosstask_scoring", "sum") == "sum"
    with pytest.raises(OptionError, match="wit_role_metrics must be set, got None; choose from all, weighted"):
        options.check("wit_role_metrics", None)
