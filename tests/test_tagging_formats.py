"""Alpaca, prompt/completion and text rows; format detection and plug-in formats."""

from __future__ import annotations

import pytest

from wit_plugin.roles import Role
from wit_plugin.tagging import RoleTagger, TaggingError
from wit_plugin.tagging.formats import RowFormat, _SegmentWriter
from wit_plugin.tagging.registry import available_formats, detect_format, hookimpl, plugin_manager


def text_of(tokenizer, tagged, role):
    return tokenizer.decode([t for t, r in zip(tagged.input_ids, tagged.roles) if r == role])


def test_alpaca_row_matches_axolotls_prompt_layout_and_roles(tokenizer):
    row = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    tagged = RoleTagger(tokenizer, "alpaca").tag(row)
    full = tokenizer.decode(tagged.input_ids)
    assert full.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5<|im_end|>" in full
    assert text_of(tokenizer, tagged, Role.INSTRUCTION) == "Add the numbers.2 and 3"
    assert text_of(tokenizer, tagged, Role.RESPONSE) == "5"
    assert text_of(tokenizer, tagged, Role.EOT) == "<|im_end|>"
    assert Role.SYSTEM not in tagged.roles


def test_alpaca_without_input_uses_the_short_preamble(tokenizer):
    tagged = RoleTagger(tokenizer, "alpaca").tag({"instruction": "Say hi.", "input": "", "output": "hi"})
    full = tokenizer.decode(tagged.input_ids)
    assert full.startswith("Below is an instruction that describes a task. Write")
    assert "### Input" not in full


def test_prompt_completion_strings(tokenizer):
    tagged = RoleTagger(tokenizer).tag({"prompt": "Q: capital of Peru?\nA:", "completion": " Lima"})
    assert text_of(tokenizer, tagged, Role.INSTRUCTION) == "Q: capital of Peru?\nA:"
    assert text_of(tokenizer, tagged, Role.RESPONSE) == " Lima"
    assert tagged.roles[-1] == Role.EOT


def test_a_prompt_ending_in_a_space_leaves_the_completion_trained(tokenizer):
    # " four" covers the prompt's trailing space and the completion's first word: the completion's, to train
    tagged = RoleTagger(tokenizer).tag({"prompt": "The sum of 2 and 2 is ", "completion": "four."})
    assert text_of(tokenizer, tagged, Role.INSTRUCTION) == "The sum of 2 and 2 is"
    assert text_of(tokenizer, tagged, Role.RESPONSE) == " four."


def test_conversational_prompt_completion_with_tools_tags_them_system(tokenizer):
    from tests.test_tagging_templates import QWEN25_STYLE

    row = {
        "prompt": [{"role": "user", "content": "Add 2 and 3."}],
        "completion": [{"role": "assistant", "content": "5"}],
        "tools": [{"type": "function", "function": {"name": "add"}}],
    }
    tagged = RoleTagger(tokenizer, "prompt_completion", chat_template=QWEN25_STYLE).tag(row)
    assert '"name": "add"' in text_of(tokenizer, tagged, Role.SYSTEM)


def test_a_completion_that_already_ends_with_eos_gets_no_second_one(tokenizer):
    plain = RoleTagger(tokenizer).tag({"prompt": "Hi.", "completion": " Hello"})
    closed = RoleTagger(tokenizer).tag({"prompt": "Hi.", "completion": " Hello<|im_end|>"})
    assert closed.input_ids == plain.input_ids and closed.roles == plain.roles


def test_conversational_prompt_completion_is_one_chat(tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "Capital of Peru?"}],
        "completion": [{"role": "assistant", "content": "Lima"}],
    }
    tagged = RoleTagger(tokenizer, "prompt_completion").tag(row)
    assert text_of(tokenizer, tagged, Role.RESPONSE) == "Lima"
    assert text_of(tokenizer, tagged, Role.INSTRUCTION) == "Capital of Peru?"


def test_text_rows_are_all_response(tokenizer):
    tagged = RoleTagger(tokenizer, "text").tag({"text": "Once upon a time."})
    assert set(tagged.roles[:-1]) == {Role.RESPONSE}
    assert tagged.roles[-1] == Role.EOT


def test_format_detection_and_errors(tokenizer):
    assert detect_format({"messages": []}).name == "chat"
    assert detect_format({"instruction": "", "output": ""}).name == "alpaca"
    assert detect_format({"prompt": "", "completion": ""}).name == "prompt_completion"
    with pytest.raises(TaggingError, match="no row format matches a row with fields \\['question'\\]"):
        detect_format({"question": "?"})
    with pytest.raises(TaggingError, match="unknown row format 'sharegpt'"):
        RoleTagger(tokenizer, "sharegpt")
    with pytest.raises(TaggingError, match="field 'output' must be a string, got int"):
        RoleTagger(tokenizer, "alpaca").tag({"instruction": "x", "output": 3})


class QuestionAnswer(RowFormat):
    name = "qa"
    columns = ("question", "answer")

    def render(self, row):
        writer = _SegmentWriter()
        writer.add("Q: ")
        writer.add(row["question"], Role.INSTRUCTION)
        writer.add("\nA: ")
        writer.add(row["answer"], Role.RESPONSE)
        return writer.finish()


class QuestionAnswerPlugin:
    @hookimpl
    def wit_row_formats(self):
        return [QuestionAnswer]


def test_third_party_formats_plug_in_through_the_hook(tokenizer):
    plugin = QuestionAnswerPlugin()
    plugin_manager().register(plugin)
    try:
        assert "qa" in available_formats()
        tagged = RoleTagger(tokenizer).tag({"question": "2+2?", "answer": "4"})
        assert text_of(tokenizer, tagged, Role.RESPONSE) == "4"
        assert text_of(tokenizer, tagged, Role.TEMPLATE) == "Q: \nA: "
    finally:
        plugin_manager().unregister(plugin)
    assert "qa" not in available_formats()
