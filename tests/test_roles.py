import math

import pytest
import torch

from wit_plugin.roles import PRESETS, WEIGHT_KEYS, Role, RoleWeights, WeightError, message_role


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("it", (0, 0, 0, 1, 1, 1)),
        ("im", (0, 1, 1, 1, 1, 1)),
        ("cpt", (1, 1, 1, 1, 1, 1)),
        ("wit", (0.4, 0.4, 0.4, 0.6, 0.6, 0.6)),
    ],
)
def test_presets(preset, expected):
    assert RoleWeights.preset(preset).as_tuple() == pytest.approx(expected)
    assert preset in PRESETS


def test_default_is_wit_and_group_keys_override_preset():
    assert RoleWeights.from_options({}).as_tuple() == pytest.approx((0.4, 0.4, 0.4, 0.6, 0.6, 0.6))
    weights = RoleWeights.from_options({"wit_preset": "it", "wit_prompt_weight": 0.2})
    assert weights.as_tuple() == pytest.approx((0.2, 0.2, 0.2, 1, 1, 1))


def test_role_keys_override_group_keys():
    weights = RoleWeights.from_options(
        {"wit_prompt_weight": 0.3, "wit_response_weight": 0.7, "wit_template_weight": 0.0, "wit_eot_weight": 1.0}
    )
    assert weights.as_tuple() == pytest.approx((0.0, 0.3, 0.3, 0.7, 1.0, 0.7))  # reasoning follows λr


def test_none_values_mean_unset():
    assert RoleWeights.from_options(dict.fromkeys(WEIGHT_KEYS)) == RoleWeights.preset("wit")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wit_prompt_weight": -0.1}, "^wit_prompt_weight must be >= 0"),  # the key the user wrote, not a role
        ({"wit_response_weight": math.nan}, "^wit_response_weight must be finite"),
        ({"wit_eot_weight": math.inf}, "^wit_eot_weight must be finite"),
        ({"wit_system_weight": "0.5"}, "^wit_system_weight must be a number"),
        ({"wit_system_weight": True}, "^wit_system_weight must be a number"),
        ({"wit_prompt_weight": 0, "wit_response_weight": 0}, "all wit role weights are zero"),
        ({"wit_preset": "sft"}, "unknown wit_preset 'sft'"),
    ],
)
def test_bad_weights_fail_with_a_message_naming_the_problem(options, message):
    with pytest.raises(WeightError, match=message):
        RoleWeights.from_options(options)


def test_direct_construction_names_the_role():
    with pytest.raises(WeightError, match="wit weight for role 'instruction' must be >= 0"):
        RoleWeights(instruction=-1.0)


def test_table_indexes_role_codes_and_pad_is_never_weighted():
    table = RoleWeights(0.1, 0.2, 0.3, 0.4, 0.5, 0.7).table()
    roles = torch.tensor([Role.TEMPLATE, Role.EOT, Role.PAD, Role.INSTRUCTION, Role.REASONING])
    assert table[roles].tolist() == pytest.approx([0.1, 0.5, 0.0, 0.3, 0.7])
    assert len(table) == len(Role) and Role.PAD == len(Role) - 1


def test_message_roles():
    assert message_role("user") is Role.INSTRUCTION
    assert message_role("tool") is Role.INSTRUCTION
    assert message_role("assistant") is Role.RESPONSE
    assert message_role("system") is Role.SYSTEM
    with pytest.raises(ValueError, match="unknown message role 'narrator'"):
        message_role("narrator")
