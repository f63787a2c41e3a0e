"""Real-world chat data: ends of turn written as text, tool calls and definitions, reasoning, content parts.

The tool-calling and thinking templates below are written here in the style of Llama 3.1, Qwen 2.5 and Qwen 3
(tool definitions in the prompt, tool calls rendered from ``tool_calls``, a ``<think>`` block kept only after the
last user turn). Axolotl's own ``llama3``, ``gemma`` and ``phi_3`` templates end turns with text that the
SmolLM2 (ChatML) tokenizer does not know as a special token.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chat_check import check_chat_row, role_text
from wit_plugin.roles import Role
from wit_plugin.tagging import RoleTagger, TaggingError

LLAMA31_STYLE = (
    "{{- bos_token }}"
    "{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = 'You are a helpful assistant.' %}{%- endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\n{% if tools %}Environment: ipython\n{% endif %}"
    "{{ system }}<|eot_id|>"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' and loop.first and tools %}"
    "<|start_header_id|>user<|end_header_id|>\n\nYou may call these functions:\n"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n\n{{ message.content }}<|eot_id|>"
    "{%- elif message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    '{%- for call in message.tool_calls %}{"name": "{{ call.function.name }}", "parameters": '
    "{{ call.function.arguments | tojson }}}{%- endfor %}<|eot_id|>"
    "{%- elif message.role in ['tool', 'ipython'] %}<|start_header_id|>ipython<|end_header_id|>\n\n"
    "{{ message.content }}<|eot_id|>"
    "{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content | trim }}<|eot_id|>"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
QWEN_TURN_END = (  # tool calls, the end of an assistant turn, tool results, other turns, the generation prompt
    "{%- for call in m.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
QWEN25_STYLE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}{%- else %}You are a helpful assistant.{%- endif %}"
    "\n\n# Tools\n<tools>{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{%- else %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'system' and loop.first %}"
    "{%- elif m.role == 'assistant' %}<|im_start|>assistant{%- if m.content %}\n{{ m.content }}{%- endif %}"
    + QWEN_TURN_END
)
QWEN3_STYLE = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}"
    "\n</tools><|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set content = m.content or '' %}{%- set reasoning = m.reasoning_content or '' %}"
    "{%- if not reasoning and '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "<|im_start|>assistant\n"
    "{%- if loop.index0 > ns.last_user %}<think>\n{{ reasoning.strip('\\n') }}\n</think>\n\n{%- endif %}"
    "{{ content }}" + QWEN_TURN_END
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def axolotl_template(name: str) -> str:
    axolotl = pytest.importorskip("axolotl.utils.chat_templates")
    return axolotl.get_chat_template(name)


# --- end of turn written as text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "closing"), [("llama3", "<|eot_id|>"), ("gemma", "<end_of_turn>"), ("phi_3", "<|end|>")]
)
def test_text_terminators_are_eot_on_a_tokenizer_that_lacks_them(tokenizer, name, closing):
    assert closing not in tokenizer.get_vocab()  # the case under test: the terminator is text, not a token
    messages = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan? 日本語で"},
        {"role": "assistant", "content": "東京です。"},
    ]
    tagged = check_chat_row(tokenizer, {"messages": messages}, closing, chat_template=axolotl_template(name))
    assert tagged.turns_without_end == 0
    runs = role_text(tagged, Role.EOT)
    assert runs.count(closing) == 2  # both turns end in eot tokens covering the whole terminator


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(
        st.tuples(
            st.text(alphabet="abc XY.!?\n<|>日本", min_size=1, max_size=25),
            st.text(alphabet="ab Z.,!<>|\n東", max_size=25),
        ),
        min_size=1,
        max_size=3,
    ),
    name=st.sampled_from(["llama3", "gemma", "phi_3"]),
)
def test_any_conversation_closes_every_turn_with_text_terminators(tokenizer, turns, name):
    closing = {"llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "phi_3": "<|end|>"}[name]
    messages = []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    check_chat_row(tokenizer, {"messages": messages}, closing, chat_template=axolotl_template(name))


def test_eot_tokens_option_replaces_the_templates_own_end(tokenizer):
    """Axolotl's ``eot_tokens``: the given texts close an assistant turn."""
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}[END]\n{% endfor %}"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    tagged = check_chat_row(tokenizer, row, "[END]", chat_template=template, eot_tokens=["[END]"])
    assert role_text(tagged, Role.EOT).strip() == "[END]"


def test_a_template_with_no_end_of_turn_warns_and_counts(tokenizer, caplog):
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    with caplog.at_level(logging.WARNING, logger="wit_plugin"):
        tagged = RoleTagger(tokenizer, "chat", chat_template=template).tag(row)
    assert tagged.turns_without_end == 1 and Role.EOT not in tagged.roles
    assert "writes nothing wit_plugin can find after an assistant turn" in caplog.text


# --- tools, tool calls, reasoning, parts -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_tokenizer(model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    return tokenizer


TOOL_CONVERSATION = [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": "Is it cold in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [call("Oslo")]},
    {"role": "tool", "content": '{"temp_c": -3}'},
    {"role": "assistant", "content": "Yes: -3 °C."},
]


@pytest.mark.parametrize(
    ("template", "closing", "tools_text"),
    [(QWEN25_STYLE, "<|im_end|>", "# Tools"), (QWEN3_STYLE, "<|im_end|>", "# Tools")],
)
def test_tool_definitions_are_system_and_tool_calls_are_response(tokenizer, template, closing, tools_text):
    row = {"messages": copy.deepcopy(TOOL_CONVERSATION), "tools": [WEATHER_TOOL]}
    tagged = check_chat_row(tokenizer, row, closing, chat_template=template)
    system = role_text(tagged, Role.SYSTEM)
    assert json.dumps(WEATHER_TOOL)[:20] in system.replace(" ", "").replace(":", ": ").replace(",", ", ") or (
        "get_weather" in system and "Current weather in a city" in system
    )
    assert tools_text in system and "You check the weather." in system
    response = role_text(tagged, Role.RESPONSE)
    assert '"name": "get_weather"' in response and '"Oslo"' in response and "Yes: -3 °C." in response
    assert '{"temp_c": -3}' in role_text(tagged, Role.INSTRUCTION)
    assert "get_weather" not in role_text(tagged, Role.TEMPLATE)


def test_llama31_style_tools_in_the_user_turn_and_a_tool_call_without_content(llama_tokenizer):
    row = {"messages": copy.deepcopy(TOOL_CONVERSATION), "tools": json.dumps([WEATHER_TOOL])}  # JSON string, too
    tagged = check_chat_row(llama_tokenizer, row, "<|eot_id|>", chat_template=LLAMA31_STYLE)
    system = role_text(tagged, Role.SYSTEM)
    assert "Environment: ipython" in system and "You may call these functions" in system and "get_weather" in system
    assert '"parameters": {"city": "Oslo"}' in role_text(tagged, Role.RESPONSE)
    assert role_text(tagged, Role.EOT).count("<|eot_id|>") == 2


def test_tools_from_template_kwargs_are_system(tokenizer):
    row = {"messages": copy.deepcopy(TOOL_CONVERSATION)}
    tagged = check_chat_row(
        tokenizer, row, "<|im_end|>", chat_template=QWEN25_STYLE, template_kwargs={"tools": [WEATHER_TOOL]}
    )
    assert "get_weather" in role_text(tagged, Role.SYSTEM)


def test_tool_calls_and_tools_a_template_does_not_render_are_refused_naming_the_message(tokenizer):
    row = {"messages": copy.deepcopy(TOOL_CONVERSATION), "tools": [WEATHER_TOOL]}
    tagger = RoleTagger(tokenizer, "chat", chat_template_name="chatml")  # SmolLM2's ChatML renders neither
    with pytest.raises(
        TaggingError, match=r"\(`chatml`\) does not render messages\[2\]\.tool_calls.*chat_template_jinja"
    ):
        tagger.tag(row)
    del row["messages"][2]["tool_calls"], row["messages"][2]["content"]
    row["messages"][2]["content"] = "Let me check."
    with pytest.raises(TaggingError, match=r"does not render tool definitions \(`tools`\).*wit_drop_unrendered"):
        tagger.tag(row)


def test_tool_calls_and_tools_a_template_does_not_render_are_dropped_and_counted_when_opted_in(tokenizer, caplog):
    row = {"messages": copy.deepcopy(TOOL_CONVERSATION), "tools": [WEATHER_TOOL]}
    tagger = RoleTagger(tokenizer, "chat", drop_unrendered=True)
    with caplog.at_level(logging.WARNING, logger="wit_plugin.tagging.chat"):
        tagged = tagger.tag(row)
    # the emptied tool-call turn is gone: no lone end of turn is trained for it, one eot for the final answer
    assert tagged.text.count("<|im_start|>assistant") == 1 and role_text(tagged, Role.EOT) == "<|im_end|>"
    assert role_text(tagged, Role.RESPONSE) == "Yes: -3 °C."
    assert tagged.dropped == ("messages[2].tool_calls", "messages[2]", "tools")
    assert tagged.dropped_kinds == ("tool_calls", "empty_turns", "tools")
    assert "dropping messages[2].tool_calls" in caplog.text
    stock = RoleTagger(tokenizer, "chat").tag({"messages": [m for k, m in enumerate(TOOL_CONVERSATION) if k != 2]})
    assert (tagged.input_ids, tagged.roles) == (stock.input_ids, stock.roles)


def test_message_keys_no_format_reads_are_reported(tokenizer):
    messages = [
        {"role": "user", "content": "hi", "loss_weight": 0.0},
        {"role": "assistant", "content": "yo", "weight": 0, "tool_call_id": "x", "name": "bot"},
    ]
    tagged = RoleTagger(tokenizer, "chat").tag({"messages": messages})
    assert tagged.unread == ("messages[0].loss_weight",)  # `weight` is the message's weight (wit_message_weight_field)
    rendering = "{% for m in messages %}{{ m.content }}{{ m.loss_weight }}<|im_end|>{% endfor %}"  # a template reads it
    assert RoleTagger(tokenizer, "chat", chat_template=rendering).tag({"messages": messages}).unread == ()
    named = RoleTagger(tokenizer, "chat", weight_field="loss_weight").tag({"messages": messages})
    assert named.unread == ("messages[1].weight",)  # another key named: `weight` is just a key again


def test_reasoning_content_and_thinking_blocks_are_reasoning(tokenizer):
    messages = [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
        {"role": "user", "content": "3 + 3?"},
        {"role": "assistant", "content": "<think>\nThree and three make six.\n</think>\n\n6"},
    ]
    tagged = check_chat_row(tokenizer, {"messages": messages}, "<|im_end|>", chat_template=QWEN3_STYLE)
    reasoning = role_text(tagged, Role.REASONING)
    assert "Three and three make six." in reasoning
    assert "Two and two" not in tagged.text  # the template keeps only the last turn's reasoning
    response = role_text(tagged, Role.RESPONSE)
    assert "</think>" in response and "6" in response and "<think>" in response


def test_a_thinking_block_in_a_template_that_ignores_reasoning_stays_where_it_is_written(tokenizer):
    messages = [
        {"role": "user", "content": "3 + 3?"},
        {"role": "assistant", "content": "<think>Three and three.</think>6"},
    ]
    tagged = check_chat_row(tokenizer, {"messages": messages}, "<|im_end|>", messages_in_order=False)
    assert role_text(tagged, Role.REASONING) == "Three and three."
    assert role_text(tagged, Role.RESPONSE) == "<think></think>6"


def test_content_as_text_parts_is_tagged_as_the_template_renders_it(tokenizer):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "Oslo."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Cold and bright."}]},
    ]
    tagged = check_chat_row(tokenizer, {"messages": messages}, "<|eot_id|>", chat_template=axolotl_template("llama3"))
    assert role_text(tagged, Role.INSTRUCTION).startswith("Describe Oslo.")  # ".<" is one token here
    assert "Cold and bright" in role_text(tagged, Role.RESPONSE)


def test_new_roles_weights_and_presets():
    from wit_plugin.roles import RoleWeights

    assert RoleWeights.preset("it").reasoning == 1.0 and RoleWeights.preset("wit").reasoning == 0.6
    assert RoleWeights.from_options({"wit_response_weight": 0.7}).reasoning == 0.7
    assert RoleWeights.from_options({"wit_response_weight": 0.7, "wit_reasoning_weight": 0.0}).reasoning == 0.0


text = st.text(alphabet=st.sampled_from(list("abcXYZ 019\n.,!?'\"<>|_-é🙂")), min_size=1, max_size=20)
message_strategy = st.one_of(
    st.tuples(st.just("user"), text),
    st.tuples(st.just("tool"), text),
    st.tuples(st.just("assistant"), text),
    st.tuples(st.just("reasoning"), text, text),
    st.tuples(st.just("think"), text, text),
    st.tuples(st.just("call"), st.sampled_from(["Oslo", "Lima", "東京"])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    system=st.one_of(st.none(), text),
    turns=st.lists(message_strategy, min_size=1, max_size=5),
    tools=st.booleans(),
    template=st.sampled_from(["qwen25", "qwen3"]),
)
def test_any_tool_and_reasoning_conversation_keeps_every_character_in_its_role(
    tokenizer, system, turns, tools, template
):
    messages = [] if system is None else [{"role": "system", "content": system}]
    for kind, *values in turns:
        if kind in ("user", "tool", "assistant"):
            messages.append({"role": kind, "content": values[0]})
        elif kind == "reasoning":
            messages.append({"role": "assistant", "content": values[1], "reasoning_content": values[0]})
        elif kind == "think":
            messages.append({"role": "assistant", "content": f"<think>{values[0]}</think>{values[1]}"})
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call(values[0])]})
    row = {"messages": messages, **({"tools": [WEATHER_TOOL]} if tools else {})}
    chat_template = QWEN3_STYLE if template == "qwen3" else QWEN25_STYLE
    try:
        check_chat_row(  # Qwen 2.5 renders no reasoning_content: dropped (opted in), it is not trained
            tokenizer,
            row,
            "<|im_end|>",
            chat_template=chat_template,
            messages_in_order=template == "qwen3",
            drop_unrendered=template == "qwen25",
        )
    except TaggingError as error:  # Qwen 2.5 renders a think block as written: its markers must not be refused
        pytest.fail(f"refused: {error}")


def test_reasoning_of_a_turn_a_user_message_follows_is_history_not_refused(tokenizer):
    """Qwen3-style templates render reasoning only after the last user message: an assistant turn followed by a
    user turn is history, its reasoning left out by design (found by the property test above)."""
    row = {
        "messages": [
            {"role": "assistant", "content": "0", "reasoning_content": "thinking"},
            {"role": "user", "content": "0"},
        ]
    }
    tagged = check_chat_row(tokenizer, row, "<|im_end|>", chat_template=QWEN3_STYLE)
    assert "thinking" not in tagged.text and not tagged.dropped
    final = {"messages": [{"role": "user", "content": "0"}, row["messages"][0]]}
    assert role_text(check_chat_row(tokenizer, final, "<|im_end|>", chat_template=QWEN3_STYLE), Role.REASONING)


def test_dataset_audit_counts_turns_without_an_end(caplog):
    from wit_plugin.tagging.audit import audit_turn_ends

    t, i, r, e, z = Role.TEMPLATE, Role.INSTRUCTION, Role.RESPONSE, Role.EOT, Role.REASONING
    rows = [
        [t, i, t, z, r, e, t],  # reasoning, response, eot: one closed turn
        [t, i, t, r, r, t, i, t, r, e, t],  # the first turn has no eot
        [t, i, t, r, r],  # cut by the row's end (truncated): not counted
        [t, i, t, r, t],  # no eot
    ]
    audit = audit_turn_ends(rows)
    assert (audit.turns, audit.without_end, audit.first_row) == (4, 2, 1)
    with caplog.at_level(logging.WARNING, logger="wit_plugin"):
        audit.warn("train", "llama3")
    assert "2 of 4 assistant turns in the train dataset have no end-of-turn token (first in row 1)" in caplog.text
    assert "with chat template llama3" in caplog.text


def test_qwen3_template_on_another_tokenizer_tags_all_text_inside_an_assistant_turn_as_output(tokenizer):
    """The generation prompt ``<|im_start|>assistant\\n<think>\\n\\n`` is matched by its role header only: the ``<``
    of ``<tool_call>`` (and an empty thinking block) belong to the turn, not to the template."""
    row = {"messages": copy.deepcopy(TOOL_CONVERSATION), "tools": [WEATHER_TOOL]}
    tagged = check_chat_row(tokenizer, row, "<|im_end|>", chat_template=axolotl_template("qwen3"))
    texts, roles = tagged.token_texts(), tagged.roles
    header = ["<|im_start|>", "ass", "istant", "\n"]
    turns = [k + len(header) for k in range(len(texts)) if texts[k : k + len(header)] == header]
    assert len(turns) == 2
    for start in turns:
        end = texts.index("<|im_end|>", start)
        assert Role.TEMPLATE not in roles[start:end], [(t, Role(r).label) for t, r in zip(texts[start:end], roles)]
    assert "<tool_call>" in role_text(tagged, Role.RESPONSE)


def test_text_parts_are_joined_for_a_template_that_concatenates_strings(tokenizer):
    parts = [{"type": "text", "text": "Describe "}, {"type": "text", "text": "Oslo."}]
    as_parts = [
        {"role": "user", "content": parts},
        {"role": "assistant", "content": [{"type": "text", "text": "Cold."}]},
    ]
    as_strings = [{"role": "user", "content": "Describe Oslo."}, {"role": "assistant", "content": "Cold."}]
    tagger = RoleTagger(tokenizer, "chat")  # SmolLM2's template: '...' + message['content'] + '...'
    tagged = tagger.tag({"messages": as_parts})
    stock = tagger.tag({"messages": as_strings})
    assert (tagged.text, tagged.input_ids, tagged.roles) == (stock.text, stock.input_ids, stock.roles)
    image = [*parts, {"type": "image", "url": "oslo.png"}]
    with pytest.raises(TaggingError, match=r"messages\[0\]\.content\[2\] is a 'image' part"):
        tagger.tag({"messages": [{"role": "user", "content": image}, as_strings[1]]})


def test_a_thinking_block_after_text_in_a_template_that_renders_reasoning_content_is_tagged_as_written(tokenizer):
    renders_reasoning = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content %}<think>{{ m.reasoning_content }}"
        "</think>{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    messages = [{"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "Sure. <think>x</think> 6"}]
    tagged = RoleTagger(tokenizer, "chat", chat_template=renders_reasoning).tag({"messages": messages})
    assert role_text(tagged, Role.REASONING) == "x"
    assert role_text(tagged, Role.RESPONSE) == "Sure. <think></think> 6"


def test_a_thinking_block_the_template_strips_is_refused_with_what_to_do(tokenizer):
    messages = [{"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "<think>x</think>6"}]
    tagger = RoleTagger(tokenizer, "chat", chat_template=axolotl_template("deepseek_v3"))
    with pytest.raises(TaggingError, match=r"does not render the thinking block \(<think>…</think>\) in messages\[1\]"):
        tagger.tag({"messages": messages})
