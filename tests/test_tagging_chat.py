"""Chat-template tagging: every content character lands in a token of its message's role."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chat_check import check_chat_row, role_text
from wit_plugin.roles import MESSAGE_WEIGHTS_KEY, Role
from wit_plugin.tagging import RoleTagger, TaggingError
from wit_plugin.tagging.chat import ChatRenderer

LLAMA3_STYLE = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nYou are a helpful assistant.<|eot_id|>{% endif %}"
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TRIMMED = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'].strip() "
    "+ '<|im_end|>\n' }}{% endfor %}"
)
SYSTEM_PROMPT_TEXT = "You are a helpful AI assistant named SmolLM"


@pytest.fixture(scope="module")
def llama_tokenizer(model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tokenizer.bos_token = "<|im_start|>"
    return tokenizer


def check_row(tokenizer, messages, chat_template=None, trims=False, closing=None):
    """Tag, then check the invariants of :mod:`tests.chat_check` (``trims``: the template trims contents)."""
    closing = closing or ("<|eot_id|>" if chat_template == LLAMA3_STYLE else "<|im_end|>")
    tagged = check_chat_row(tokenizer, {"messages": messages}, closing, chat_template=chat_template)
    rendered = ChatRenderer(tokenizer, chat_template=chat_template).render(messages)
    contents = [m["content"].strip() if trims else m["content"] for m in messages]
    placed = [rendered.text[span.start : span.end] for span in rendered.placed if span.end > span.start]
    assert placed == [content for content in contents if content]  # located exactly, not guessed
    return rendered, tagged


def test_chatml_default_system_prompt_is_template_even_when_the_user_repeats_it(tokenizer):
    messages = [
        {"role": "user", "content": SYSTEM_PROMPT_TEXT},
        {"role": "assistant", "content": "Hello there."},
    ]
    rendered, tagged = check_row(tokenizer, messages)
    default_prompt_start = rendered.text.index(SYSTEM_PROMPT_TEXT)
    assert default_prompt_start < rendered.placed[0].start  # the template's copy comes first ...
    first_content_token = next(i for i, r in enumerate(tagged.roles) if r != Role.TEMPLATE)
    assert tagged.roles[first_content_token] == Role.INSTRUCTION  # ... and stays template


def test_multi_turn_with_system_and_tool_turns(tokenizer):
    messages = [
        {"role": "system", "content": "You answer with tools."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Calling the weather tool."},
        {"role": "tool", "content": '{"temp_c": 3}'},
        {"role": "assistant", "content": "It is 3 °C in Oslo."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    _, tagged = check_row(tokenizer, messages)
    counts = np.bincount(tagged.roles, minlength=len(Role))
    assert counts[Role.SYSTEM] > 0 and counts[Role.EOT] == 3


def test_llama3_style_template_with_default_system_prompt_and_trimming(llama_tokenizer):
    messages = [
        {"role": "user", "content": "  What is 2 + 2?\n"},
        {"role": "assistant", "content": " 4 "},
    ]
    rendered, tagged = check_row(llama_tokenizer, messages, chat_template=LLAMA3_STYLE, trims=True)
    assert "You are a helpful assistant." in rendered.text
    assert tagged.roles[0] == Role.TEMPLATE  # BOS rendered by the template


def test_chatml_template_that_trims_content(tokenizer):
    messages = [{"role": "user", "content": "\n hi \n"}, {"role": "assistant", "content": "  hello  "}]
    check_row(tokenizer, messages, chat_template=CHATML_TRIMMED, trims=True)


def test_empty_assistant_content_still_gets_its_end_of_turn(tokenizer):
    messages = [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]
    _, tagged = check_row(tokenizer, messages)
    assert Role.RESPONSE not in tagged.roles


def test_role_map_and_custom_fields(tokenizer):
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    tagger = RoleTagger(
        tokenizer,
        "chat",
        field_messages="conversations",
        role_field="from",
        content_field="value",
        role_map={"human": "user", "gpt": "assistant"},
    )
    tagged = tagger.tag(row)
    assert Role.INSTRUCTION in tagged.roles and Role.RESPONSE in tagged.roles


@pytest.mark.parametrize("weight", [None, 0.5])
def test_truncation_cuts_every_column_together(tokenizer, weight):
    user = {"role": "user", "content": "word " * 50, **({"weight": weight} if weight is not None else {})}
    row = {"messages": [user, {"role": "assistant", "content": "ok"}]}
    full = RoleTagger(tokenizer, "chat").tag(row)
    cut = RoleTagger(tokenizer, "chat", max_length=20).tag(row)
    assert len(cut.input_ids) == len(cut.roles) == 20
    assert cut.input_ids == full.input_ids[:20] and cut.roles == full.roles[:20]
    features = cut.as_features()
    weights = features.pop(MESSAGE_WEIGHTS_KEY)  # empty when every multiplier is 1
    assert {len(v) for v in features.values()} == {20}
    assert len(weights) == (0 if weight is None else 20)
    assert np.array_equal(weights, full.message_weights[:20])


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "'messages' must be a non-empty list of messages"),
        ([{"role": "narrator", "content": "x"}], "messages\\[0\\].role: unknown message role 'narrator'"),
        ([{"role": ["user"], "content": "x"}], "messages\\[0\\].role must be a string, got \\['user'\\]"),
        ([{"role": "user", "content": ["a", "b"]}], "messages\\[0\\].content\\[0\\] is a 'str' part"),
        ([{"role": "user", "content": [{"type": "image"}]}], "messages\\[0\\].content\\[0\\] is a 'image' part"),
        ([{"role": "user", "content": 3}], "messages\\[0\\].content must be a string, a list of text parts or null"),
        ([{"role": "user"}], "messages\\[0\\] has no 'content' field"),
        ([{"content": "x"}], "messages\\[0\\] has no 'role' field"),
        (["hello"], "messages\\[0\\] is not a mapping"),
    ],
)
def test_malformed_rows_fail_with_a_clear_error(tokenizer, messages, message):
    with pytest.raises(ValueError, match=message):
        RoleTagger(tokenizer, "chat").tag({"messages": messages})


def test_template_that_drops_a_response_is_an_error(tokenizer):
    drops_assistant = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    )
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo there"}]}
    with pytest.raises(TaggingError, match="does not render messages\\[1\\].content"):
        RoleTagger(tokenizer, "chat", chat_template=drops_assistant).tag(row)


def test_template_that_drops_a_system_prompt_is_refused_unless_the_dataset_opts_in(tokenizer, caplog):
    drops_system = (
        "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    )
    row = {
        "messages": [
            {"role": "system", "content": "secret"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
        ]
    }
    with pytest.raises(TaggingError, match=r"does not render messages\[0\]\.content \(system\).*wit_drop_unrendered"):
        RoleTagger(tokenizer, "chat", chat_template=drops_system).tag(row)
    tagger = RoleTagger(tokenizer, "chat", chat_template=drops_system, drop_unrendered=True)
    with caplog.at_level(logging.WARNING, logger="wit_plugin.tagging.chat"):
        first, _second = tagger.tag(row), tagger.tag(row)
    warnings = [record.getMessage() for record in caplog.records if "dropping" in record.getMessage()]
    assert len(warnings) == 1 and "messages[0].content" in warnings[0]
    assert "secret" not in tokenizer.decode(first.input_ids) and Role.SYSTEM not in first.roles
    assert first.dropped == ("messages[0].content",) and first.dropped_kinds == ("content",)


text = st.text(alphabet=st.sampled_from(list("abcXYZ 019\n\t.,!?'\"<>|_-é🙂")), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    system=st.one_of(st.none(), text),
    turns=st.lists(st.tuples(st.sampled_from(["user", "tool"]), text, text), min_size=1, max_size=3),
    template=st.sampled_from(["chatml", "llama3"]),
)
def test_any_conversation_keeps_every_content_character_in_its_role(
    tokenizer, llama_tokenizer, system, turns, template
):
    messages = [] if system is None else [{"role": "system", "content": system}]
    for asker, question, answer in turns:
        messages += [{"role": asker, "content": question}, {"role": "assistant", "content": answer}]
    if template == "chatml":
        check_row(tokenizer, copy.deepcopy(messages))
    else:
        check_row(llama_tokenizer, copy.deepcopy(messages), chat_template=LLAMA3_STYLE, trims=True)


def test_template_that_alters_content_tags_the_text_between_its_scaffold_pieces(tokenizer):
    shouting = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}"
    row = {"messages": [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "blue"}]}
    rendered = ChatRenderer(tokenizer, chat_template=shouting).render(row["messages"])
    assert [rendered.text[s.start : s.end] for s in rendered.placed] == ["NAME A COLOUR", "BLUE"]
    tagged = RoleTagger(tokenizer, "chat", chat_template=shouting).tag(row)
    assert role_text(tagged, Role.INSTRUCTION) == "NAME A COLOUR" and role_text(tagged, Role.RESPONSE) == "BLUE"
    assert role_text(tagged, Role.EOT) == "<|im_end|>"


def test_whitespace_tokens_with_trimmed_offsets_keep_their_contents_role(tokenizer):
    """GPT-2-style post-processors trim offsets (trim_offsets=True): a lone space token then covers nothing."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    trimmed = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    trimmed.chat_template = tokenizer.chat_template
    messages = [{"role": "user", "content": "Indent it"}, {"role": "assistant", "content": "if x:\n    y  =  1"}]
    tagged = RoleTagger(trimmed, "chat").tag({"messages": messages})
    offsets = trimmed(tokenizer.apply_chat_template(messages, tokenize=False), return_offsets_mapping=True)
    assert any(start == end for start, end in offsets["offset_mapping"])  # the case under test does occur
    response = [t for t, r in zip(tagged.input_ids, tagged.roles) if r == Role.RESPONSE]
    assert trimmed.decode(response) == "if x:\n    y  =  1"
    # a template space just before a content stays template, with or without trimmed offsets
    colon = "{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>\n{% endfor %}"
    spaced = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " ok"}]
    for each in (tokenizer, trimmed):
        tagged = RoleTagger(each, "chat", chat_template=colon).tag({"messages": spaced})
        assert each.decode([t for t, r in zip(tagged.input_ids, tagged.roles) if r == Role.RESPONSE]) == " ok"


def test_a_stale_cached_scaffold_is_rendered_again(tokenizer):
    """Templates that print today's date (Llama 3.1) change their scaffold at midnight, mid-dataset."""
    from wit_plugin.tagging.chat import ChatRenderer

    template = (
        "<|im_start|>system\nToday is {{ today }}.<|im_end|>\n"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    renderer = ChatRenderer(tokenizer, chat_template=template, template_kwargs={"today": "31 Dec"})
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    renderer.render(messages)
    renderer.template_kwargs = {"today": "1 Jan"}  # the clock moved on; the cached scaffold still says 31 Dec
    row = renderer.render(messages)
    assert "Today is 1 Jan." in row.text and [row.text[s.start : s.end] for s in row.placed] == ["Hi", "Hello"]
