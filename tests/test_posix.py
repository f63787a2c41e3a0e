"""POSIX on the real SmolLM2-135M-Instruct: exactness against a one-pair-at-a-time float64 computation, the
formula's edge cases, variant generators, the CLI and the trainer callback."""

from __future__ import annotations

import copy
import difflib
import json
import os
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from wit_plugin.evaluation.callback import POSIXCallback, evaluation_callbacks
from wit_plugin.evaluation.engine import SpecialIds, prefill, render_prompt, score, shared_prefix
from wit_plugin.evaluation.posix import POSIXSettings, evaluate_posix, psi
from wit_plugin.evaluation.posix.prompts import prompt_text, write_prompt_sets
from wit_plugin.evaluation.posix.variants import (
    CHAT,
    FORMATS,
    TEMPLATES,
    apply_format,
    load_prompt_sets,
    make_prompt_set,
    misspell,
)
from wit_plugin.options import OptionError

from .reference_posix import ReferenceUnavailable, load_reference

CAPITAL = "What is the capital of France? Answer in one short sentence."
SKY = "Explain why the sky is blue."
MIXED_SET = [
    [{"role": "user", "content": CAPITAL}],
    [{"role": "user", "content": "Wht is the capital of Frnace? Answer in one short sentence."}],
    f"Q: {CAPITAL}\nA:",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small forwards on a shared 2-core machine: a second OpenMP thread mostly waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol_path() -> Path:
    from wit_plugin.demo.model import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="module")
def smol(smol_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(smol_path)


def reference_logprob(model, x: list[int], y: list[int]) -> float:
    """log P(y | x) from one unpadded forward of x + y, log-softmax in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([x + y])).logits[0, len(x) - 1 : len(x) + len(y) - 1].double()
    return logits.log_softmax(-1).gather(-1, torch.tensor(y)[:, None]).sum().item()


def reference_psi(matrix, lengths) -> float:
    n = len(lengths)
    total = sum(abs(matrix[i][j] - matrix[j][j]) / lengths[j] for i in range(n) for j in range(n))
    return total / (n * (n - 1))


@pytest.fixture(scope="module")
def mixed_result(smol):
    model, tokenizer = smol
    sets = [MIXED_SET, [SKY, [{"role": "user", "content": SKY}]]]
    return evaluate_posix(model, sets, tokenizer, max_new_tokens=10, batch_size=4)


def test_matches_one_pair_at_a_time_float64(smol, mixed_result):
    model, tokenizer = smol
    for result in mixed_result.sets:
        inputs = [render_prompt(tokenizer, prompt) for prompt in result.prompts]
        outputs = [list(response.token_ids) for response in result.responses]
        expected = [[reference_logprob(model, x, y) for y in outputs] for x in inputs]
        assert result.logprobs.shape == (len(inputs), len(inputs))
        assert result.logprobs == pytest.approx(torch.tensor(expected).numpy(), abs=1e-4)
        assert result.psi == pytest.approx(reference_psi(expected, [len(y) for y in outputs]), abs=1e-4)
    assert mixed_result.posix == pytest.approx(sum(mixed_result.psis) / 2)
    assert all(value > 0 for value in mixed_result.psis)  # these variants do change the model's likelihoods


def test_work_counts_what_ran(smol, mixed_result):
    _, tokenizer = smol
    work, sets = mixed_result.work, mixed_result.sets  # batch_size=4: the two sets ran as two groups
    expected_prompt_tokens = 0
    for result in sets:  # a shared prefix runs once, each prompt's rest once
        prompts = list(dict.fromkeys(tuple(render_prompt(tokenizer, p)) for p in result.prompts))
        prefix = shared_prefix(prompts)
        members = sum(len(x) > len(prefix) and x[: len(prefix)] == prefix for x in prompts) if prefix else 0
        expected_prompt_tokens += len(prefix) + sum(map(len, prompts)) - members * len(prefix)
    assert work["prompt_tokens"] == expected_prompt_tokens < sum(len(x) for r in sets for x in r.prompts) * 100
    assert work["decode_steps"] == sum(max(len(r.token_ids) for r in result.responses) - 1 for result in sets)
    off_diagonal = sum(
        len(y.token_ids) for result in sets for x in result.responses for y in dict.fromkeys(result.responses) if y != x
    )
    assert work["scored_tokens"] == off_diagonal
    assert min(work["prefill_s"], work["decode_s"], work["score_s"]) > 0


def test_responses_are_unbatched_greedy_continuations(smol, mixed_result):
    model, tokenizer = smol
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for result in mixed_result.sets:
        for prompt, response in zip(result.prompts, result.responses):
            ids = render_prompt(tokenizer, prompt)
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=eos)
            alone = out[0, len(ids) :].tolist()
            expected = alone[: alone.index(eos) + 1] if eos in alone else alone
            assert list(response.token_ids) == expected
            assert eos not in response.token_ids[:-1]  # nothing after the first EOS is part of a response


def test_chat_prompts_use_the_template_and_raw_prompts_do_not(smol, mixed_result):
    _, tokenizer = smol
    chat, raw = render_prompt(tokenizer, MIXED_SET[0]), render_prompt(tokenizer, MIXED_SET[2])
    assert tokenizer.decode(chat).startswith("<|im_start|>system")
    assert tokenizer.decode(chat).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(raw) == MIXED_SET[2]
    assert prompt_text(mixed_result.sets[0].prompts[0]) == CAPITAL


def test_identical_prompts_give_zero(smol):
    model, tokenizer = smol
    chat = [{"role": "user", "content": SKY}]
    result = evaluate_posix(model, [[chat, chat, copy.deepcopy(chat)], [SKY, SKY]], tokenizer, max_new_tokens=6)
    assert result.psis == [0.0, 0.0]
    assert result.posix == 0.0
    assert len({r.token_ids for r in result.sets[0].responses}) == 1


def test_psi_is_nonnegative_and_order_free(smol, mixed_result):
    model, tokenizer = smol
    reordered = evaluate_posix(model, [[MIXED_SET[2], MIXED_SET[0], MIXED_SET[1]]], tokenizer, max_new_tokens=10)
    original = mixed_result.sets[0]
    order = [2, 0, 1]
    assert reordered.sets[0].psi == pytest.approx(original.psi, abs=1e-4)
    assert reordered.sets[0].logprobs == pytest.approx(original.logprobs[order][:, order], abs=1e-4)
    assert reordered.sets[0].psi >= 0 and all(value >= 0 for value in mixed_result.psis)


def test_evaluation_restores_every_module_mode(smol):
    model, tokenizer = smol
    model.train()
    model.model.embed_tokens.eval()  # e.g. a frozen part kept in eval mode by the caller
    before = {name: module.training for name, module in model.named_modules()}
    try:
        evaluate_posix(model, [[SKY, SKY.lower()]], tokenizer, max_new_tokens=2)
        assert {name: module.training for name, module in model.named_modules()} == before
    finally:
        model.eval()


def test_psi_formula_by_hand():
    # |-3 - (-2)| / 2 + |-6 - (-4)| / 4 = 0.5 + 0.5, over N (N - 1) = 2
    assert psi([[-2.0, -6.0], [-3.0, -4.0]], [2, 4]) == pytest.approx(0.5)
    assert psi([[-2.0, -6.0], [-3.0, -4.0]], [2, 4], "paper") == pytest.approx(0.5)
    # the package's pairs, two responses under one prompt: (|-6 - (-2)| + |-3 - (-4)|) / 8, over 2
    assert psi([[-2.0, -6.0], [-3.0, -4.0]], [2, 4], "package", max_new_tokens=8) == pytest.approx(0.3125)
    with pytest.raises(ValueError, match="N x N"):
        psi([[0.0, 1.0]], [1, 1])
    with pytest.raises(ValueError, match="unknown wit_posix_psi 'Package'; choose from paper, package"):
        psi([[0.0, 1.0], [1.0, 0.0]], [1, 1], "Package")
    with pytest.raises(ValueError, match="divides by max_new_tokens, which must be at least 1, got None"):
        psi([[0.0, 1.0], [1.0, 0.0]], [1, 1], "package")


def test_early_eos_uses_the_response_length(smol):
    model, tokenizer = smol
    prompts = [[{"role": "user", "content": CAPITAL}], [{"role": "user", "content": CAPITAL.lower()}]]
    result = evaluate_posix(model, [prompts], tokenizer, max_new_tokens=24).sets[0]
    lengths = [len(r.token_ids) for r in result.responses]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(r.token_ids[-1] == eos for r in result.responses) and max(lengths) < 24
    assert result.psi == pytest.approx(reference_psi(result.logprobs, lengths), rel=1e-9)
    assert result.psi != pytest.approx(reference_psi(result.logprobs, [24, 24]), rel=1e-3)

    truncated = evaluate_posix(model, [prompts], tokenizer, max_new_tokens=3).sets[0]
    assert [len(r.token_ids) for r in truncated.responses] == [3, 3]
    assert all(eos not in r.token_ids for r in truncated.responses)
    assert truncated.psi == pytest.approx(reference_psi(truncated.logprobs, [3, 3]), rel=1e-9)


def test_padding_in_a_batch_is_never_scored(smol):
    model, tokenizer = smol
    special = SpecialIds.of(model, tokenizer)
    prompts = [tuple(render_prompt(tokenizer, CAPITAL)), tuple(render_prompt(tokenizer, MIXED_SET[0]))]
    short, long = (
        tuple(tokenizer("Paris.")["input_ids"]),
        tuple(tokenizer(" The capital is Paris, France.")["input_ids"]),
    )
    pairs = [(0, short), (1, long), (1, short), (0, long)]
    start = prefill(model, prompts, special.pad)
    together = score(model, start, pairs, special.pad, batch_size=4)
    alone = [score(model, prefill(model, [prompts[row]], special.pad), [(0, y)], special.pad, 1)[0] for row, y in pairs]
    expected = [reference_logprob(model, list(prompts[row]), list(y)) for row, y in pairs]
    assert together == pytest.approx(alone, abs=1e-4)
    assert together == pytest.approx(expected, abs=1e-4)


def test_a_shared_prefix_runs_once_and_changes_no_value(smol):
    model, tokenizer = smol
    special = SpecialIds.of(model, tokenizer)
    chat = [tuple(render_prompt(tokenizer, [{"role": "user", "content": text}])) for text in (CAPITAL, SKY)]
    raw = tuple(render_prompt(tokenizer, CAPITAL))
    common = tuple(os.path.commonprefix(chat))
    assert len(common) > 10 and shared_prefix([*chat, raw]) == common  # the system turn and the user header
    assert shared_prefix([(5, 6, 7), (1, 2, 3), (1, 2, 4)]) == ()  # the widest row gains nothing
    assert shared_prefix([(1, 2, 3, 4), (1, 2, 3, 5), (9,)]) == (1, 2, 3)
    assert shared_prefix([(1, 2, 3, 4, 5, 6), (7, 8), (9,)]) == (1, 2, 3, 4)  # one long prompt's bulk, run alone
    prompts = [*chat, raw, common]  # the last is the prefix itself: it has no remainder, so it stays whole
    shapes: list[tuple[int, ...]] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        start = prefill(model, prompts, special.pad)
    finally:
        hook.remove()
    assert shapes[0] == (1, len(shared_prefix(prompts))) and shapes[1][0] == len(prompts)  # prefix once, alone
    response = tuple(tokenizer(" Paris is the capital.")["input_ids"])
    together = score(model, start, [(row, response) for row in range(len(prompts))], special.pad, batch_size=4)
    for row, prompt in enumerate(prompts):
        alone = prefill(model, [prompt], special.pad)
        assert start.lengths[row] == len(prompt)
        torch.testing.assert_close(start.last_logits[row], alone.last_logits[0], atol=1e-4, rtol=1e-4)
        assert together[row] == pytest.approx(reference_logprob(model, list(prompt), list(response)), abs=1e-4)


def _tokens_run(prompts: list[tuple[int, ...]], prefix: tuple[int, ...]) -> int:
    """What prefill computes with ``prefix`` run once: the prefix, then every row padded to the widest rest."""
    k = len(prefix)
    rests = [len(p) - k if k and len(p) > k and p[:k] == prefix else len(p) for p in prompts]
    return k + len(prompts) * max(rests)


@given(st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=7).map(tuple), min_size=1, max_size=6))
def test_shared_prefix_minimises_the_tokens_run(prompts):
    candidates = {p[:k] for p in prompts for k in range(1, len(p))} | {()}
    chosen = shared_prefix(prompts)
    assert chosen == () or any(p[: len(chosen)] == chosen and len(p) > len(chosen) for p in prompts)
    assert _tokens_run(prompts, chosen) == min(_tokens_run(prompts, c) for c in candidates)


class _IdTokenizer:
    """Raw prompts written as space-separated token ids: enough to drive tiny random models."""

    chat_template = None
    pad_token_id = 0

    def __init__(self, eos: int) -> None:
        self.eos_token_id = eos

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [int(token) for token in text.split()]}

    def decode(self, ids, **kwargs) -> str:
        return " ".join(map(str, ids))


TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.2,
}


def _tiny_model(kind: str):
    import transformers

    torch.manual_seed(0)
    if kind == "sliding_window":  # windows count cache slots: pads between a shared prefix and the rest would count
        model = transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=4, **TINY))
    elif kind == "conv":  # short convolutions keep state that no attention mask reaches
        model = transformers.Lfm2ForCausalLM(transformers.Lfm2Config(full_attn_idxs=[1], **TINY))
    elif kind == "ssm_hybrid":  # Mamba state beside attention, updated in place
        config = transformers.FalconH1Config(
            mamba_d_ssm=32, mamba_n_heads=4, mamba_d_state=8, mamba_chunk_size=16, mamba_d_conv=4, **TINY
        )
        model = transformers.FalconH1ForCausalLM(config)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    model.generation_config.eos_token_id = None
    return model.eval()


def _greedy_alone(model, prompt: list[int], eos: set[int], max_new_tokens: int) -> list[int]:
    ids, response = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            response.append(token)
            ids.append(token)
            if token in eos:
                break
    return response


@pytest.mark.parametrize("kind", ["plain", "sliding_window", "conv", "ssm_hybrid"])
def test_caches_beyond_plain_attention_give_exact_values(kind):
    model = _tiny_model(kind)
    prompts = ["10 11 12 13 14 15 20", "10 11 12 13 14 15 21 22 23 24 25", "30 31"]  # a shared prefix, padding
    ids = [[int(token) for token in prompt.split()] for prompt in prompts]
    eos = _greedy_alone(model, ids[0], set(), 1)[0]  # the first prompt stops at once: a row drops mid-batch
    rows: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        result = evaluate_posix(model, [prompts], _IdTokenizer(eos), max_new_tokens=4).sets[0]
    finally:
        hook.remove()
    assert rows[0] == (1 if kind == "plain" else 3)  # only plain attention runs the shared prefix on its own
    responses = [list(response.token_ids) for response in result.responses]
    assert responses == [_greedy_alone(model, x, {eos}, 4) for x in ids]
    expected = [[reference_logprob(model, x, y) for y in responses] for x in ids]
    assert result.logprobs == pytest.approx(torch.tensor(expected).numpy(), abs=1e-4)


def test_prompts_skip_the_head_through_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_model("plain"), LoraConfig(r=2, target_modules=["q_proj"]))
    widths: list[int] = []
    model.get_base_model().lm_head.register_forward_hook(lambda module, args, out: widths.append(out.shape[1]))
    start = prefill(model, [(10, 11, 12, 13), (10, 11, 14), (20, 21)], pad=0)
    assert widths and set(widths) == {1}  # prefix and rows: only the last position reaches the LM head
    assert start.last_logits.shape == (3, 64)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ([[CAPITAL]], "fewer than 2 prompts"),
        ([], "at least one prompt set"),
        ([[CAPITAL, "   "]], "empty prompt"),
        ([[CAPITAL, [{"role": "user", "content": ""}]]], "empty prompt"),
        ([[CAPITAL, []]], "non-empty"),
    ],
)
def test_bad_prompt_sets_are_rejected(smol, sets, message):
    model, tokenizer = smol
    with pytest.raises(ValueError, match=message):
        evaluate_posix(model, sets, tokenizer, max_new_tokens=2)


def test_chat_prompts_need_a_chat_template(smol):
    model, tokenizer = smol
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        evaluate_posix(model, [[CAPITAL, [{"role": "user", "content": CAPITAL}]]], plain, max_new_tokens=2)


def test_misspell_is_seeded_and_keeps_the_text_readable():
    text = "Please summarise the following paragraph about renewable energy in three sentences."
    first, again = misspell(text, random.Random(7), 0.05), misspell(text, random.Random(7), 0.05)
    assert first == again != text
    assert misspell(text, random.Random(8), 0.05) != first
    assert difflib.SequenceMatcher(None, text, first).ratio() > 0.9
    words, changed = text.split(), first.split()
    edits = round(0.05 * sum(c.isalpha() for c in text))  # the rate sets the number of typos
    assert len(changed) == len(words) and sum(a != b for a, b in zip(words, changed)) <= edits < len(words) / 2
    assert all(b[0] == a[0] for a, b in zip(words, changed))  # first letters stay
    light = difflib.SequenceMatcher(None, text, misspell(text, random.Random(7), 0.02)).ratio()
    heavy = difflib.SequenceMatcher(None, text, misspell(text, random.Random(7), 0.2)).ratio()
    assert heavy < light


def test_prompt_sets_mix_variant_kinds_deterministically():
    paraphrases = ["Why does the sky look blue?", "What makes the sky blue?"]
    make = lambda seed: make_prompt_set(
        SKY, random.Random(seed), 6, ("spelling", "template", "paraphrase"), paraphrases, CHAT
    )
    prompts = make(3)
    assert prompts == make(3) and prompts != make(4)
    assert prompts[0] == [{"role": "user", "content": SKY}] and len(prompts) == 6
    for prompt in prompts[1:]:
        text = prompt_text(prompt)
        for template in TEMPLATES.values():
            head, _, tail = template.partition("{}")
            if head and text.startswith(head) and text.endswith(tail):
                text = text[len(head) : len(text) - len(tail)]
        best = max(difflib.SequenceMatcher(None, text, intent).ratio() for intent in [SKY, *paraphrases])
        assert best > 0.75, prompt
    templated = make_prompt_set(SKY, random.Random(0), 5, ("template",))
    assert len({json.dumps(p) for p in templated}) == 5  # four distinct formats besides the raw original
    assert all(SKY in prompt_text(p) for p in templated)
    with pytest.raises(ValueError, match="paraphrase"):
        make_prompt_set(SKY, random.Random(0), 3, ("paraphrase",))


FRAMED = [f"Question: {SKY}\nAnswer:", f"Q: {SKY}\nA:", f"Instruction: {SKY}\nResponse:", f"{SKY}\nAnswer:"]


@pytest.mark.parametrize("framed", FRAMED)
def test_variants_of_a_framed_prompt_wrap_the_bare_instruction_once(framed, tmp_path):
    """A task input that already carries a template (cross-task rows: "Question: ...\nAnswer:") is varied without
    it: the original stays as given, no variant holds two frames, and every template variant is the bare
    instruction wrapped once."""
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"task": "t", "input": framed, "label": "x"}) + "\n")
    for kinds in (("template",), ("spelling", "template")):
        for seed in range(4):
            (prompts,) = load_prompt_sets(path, kinds, size=6, seed=seed)
            assert prompts[0] == framed
            for prompt in prompts[1:]:
                text = prompt_text(prompt)
                cues = sum(
                    text.count(cue) for cue in ("Question:", "Answer:", "Q:", "\nA:", "Instruction:", "Response:")
                )
                assert cues <= 2 and text.count("\nAnswer:") <= 1, prompt  # one frame at most (prefix + cue)
                if kinds == ("template",) and prompt != framed:
                    bare_forms = [apply_format(SKY, fmt) for fmt in FORMATS] + [framed]
                    assert prompt in bare_forms, prompt


def test_load_prompt_sets_from_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [
        {"prompts": [CAPITAL, [{"role": "user", "content": CAPITAL}]]},
        {"messages": [{"role": "user", "content": SKY}, {"role": "assistant", "content": "Rayleigh scattering."}]},
        {"instruction": "Add two and three.", "paraphrases": ["What is 2 + 3?"]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sets = load_prompt_sets(path, ("spelling", "template"), size=4, seed=1)
    assert sets[0] == rows[0]["prompts"]
    assert sets[1][0] == [{"role": "user", "content": SKY}] and len(sets[1]) == 4
    assert sets[2][0] == "Add two and three." and len(sets[2]) == 4
    assert sets == load_prompt_sets(path, ("spelling", "template"), size=4, seed=1)
    assert sets[1:] != load_prompt_sets(path, ("spelling", "template"), size=4, seed=2)[1:]
    path.write_text("\n" + json.dumps({"text": "no instruction here"}) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:2: "):
        load_prompt_sets(path)


def test_prompt_sets_may_be_any_sequence(smol):
    from collections import UserList

    model, tokenizer = smol
    sets = UserList([(SKY, SKY.lower())])
    assert evaluate_posix(model, sets, tokenizer, max_new_tokens=1).sets[0].prompts == [SKY, SKY.lower()]
    with pytest.raises(ValueError, match="needs a list of prompt sets, got NoneType"):
        evaluate_posix(model, None, tokenizer)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ("What is two plus three?", "must be a list of prompts, got str"),
        (None, "must be a list of prompts, got NoneType"),
        ({"a": "x", "b": "y"}, "must be a list of prompts, got dict"),
        (["only one"], "has fewer than 2 prompts"),
    ],
)
def test_malformed_prompt_rows_name_the_line(tmp_path, prompts, message):
    path = tmp_path / "sets.jsonl"
    path.write_text(json.dumps({"prompts": [CAPITAL, SKY]}) + "\n" + json.dumps({"prompts": prompts}) + "\n")
    with pytest.raises(ValueError, match=rf"sets.jsonl:2: 'prompts' {message}"):
        load_prompt_sets(path)


def test_cli_writes_trace_and_plot(smol_path, tmp_path, capsys):
    from wit_plugin.cli import main

    prompts = write_prompt_sets(tmp_path / "sets.jsonl", [[CAPITAL, MIXED_SET[0]]])
    with (tmp_path / "sets.jsonl").open("a") as handle:
        handle.write(json.dumps({"instruction": SKY}) + "\n")
    trace, plot = tmp_path / "trace.json", tmp_path / "psi.png"
    argv = ["posix", "--model", str(smol_path), "--prompts", str(prompts), "--max-new-tokens", "4"]
    argv += [
        "--num-variants",
        "3",
        "--variants",
        "spelling",
        "--out",
        str(trace),
        "--plot",
        str(plot),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    data = json.loads(trace.read_text())
    assert set(data["work"]) >= {"prefill_s", "decode_s", "score_s"}
    assert len(data["sets"]) == 2 and data["posix"] == pytest.approx(sum(s["psi"] for s in data["sets"]) / 2)
    second = data["sets"][1]
    assert len(second["prompts"]) == 3 and len(second["logprobs"]) == 3 and len(second["logprobs"][0]) == 3
    assert all(set(r) == {"text", "token_ids"} and 1 <= len(r["token_ids"]) <= 4 for r in second["responses"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "POSIX" in capsys.readouterr().out
    assert main(["posix", "--model", str(smol_path), "--prompts", str(tmp_path / "missing.jsonl")]) == 2


def test_the_same_command_reuses_a_saved_result_and_force_recomputes(smol_path, tmp_path, monkeypatch):
    from wit_plugin.cli import main
    from wit_plugin.evaluation import models

    prompts = write_prompt_sets(tmp_path / "sets.jsonl", [[CAPITAL, MIXED_SET[0]]])
    trace = tmp_path / "new" / "trace.json"  # a folder that does not exist yet
    argv = ["posix", "--model", str(smol_path), "--prompts", str(prompts), "--max-new-tokens", "3"]
    assert main([*argv, "--out", str(trace)]) == 0
    first = json.loads(trace.read_text())
    assert first["resume"]["complete"] and len(first["sets"]) == 1
    real, loads = models.load_model, []
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert main([*argv, "--out", str(trace)]) == 0 and not loads  # nothing to evaluate again
    assert json.loads(trace.read_text()) == first
    assert main([*argv, "--out", str(trace), "--force"]) == 0 and len(loads) == 1
    assert main([*argv, "--out", str(trace), "--max-new-tokens", "2"]) == 0 and len(loads) == 2  # other flags


def test_callback_options(tmp_path):
    assert evaluation_callbacks({}) == []
    with pytest.raises(OptionError, match="set without `wit_posix_prompts`"):
        evaluation_callbacks({"wit_posix_prompts": None, "wit_posix_steps": 5})
    path = write_prompt_sets(tmp_path / "sets.jsonl", [[SKY, CAPITAL]])
    (callback,) = evaluation_callbacks({"wit_posix_prompts": str(path)})
    assert (callback.every_n_steps, callback.settings, callback.prompt_sets) == (100, POSIXSettings(), [[SKY, CAPITAL]])
    assert POSIXSettings() == POSIXSettings(32, 32, "paper")  # the options' defaults
    for bad in (0, -1):  # 0 is an error too, not the default
        with pytest.raises(ValueError, match=f"every_n_steps must be at least 1, got {bad}"):
            POSIXCallback(str(path), every_n_steps=bad)
        for key in ("wit_posix_max_new_tokens", "wit_posix_batch_size"):
            with pytest.raises(OptionError, match=f"{key} must be >= 1, got {bad}"):
                POSIXCallback(str(path), 1, POSIXSettings.from_options({key: bad}))


def test_callback_logs_posix_during_training(smol_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    texts = ["The sky is blue.", "Paris is in France.", "Two and three make five.", "Water is wet."]
    encoded = tokenizer(texts, padding="max_length", max_length=12)
    rows = [
        {"input_ids": ids, "attention_mask": mask, "labels": [t if m else -100 for t, m in zip(ids, mask)]}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])
    ]
    sets_path = write_prompt_sets(tmp_path / "held_out.jsonl", [[SKY, [{"role": "user", "content": SKY}]]])

    class TrainingFlag(TrainerCallback):
        def __init__(self) -> None:
            self.seen: list[bool] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.seen.append(model.training)

    (posix,) = evaluation_callbacks(
        {"wit_posix_prompts": str(sets_path), "wit_posix_steps": 1, "wit_posix_max_new_tokens": 4}
    )
    assert isinstance(posix, POSIXCallback) and posix.every_n_steps == 1 and posix.settings.max_new_tokens == 4
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    flag = TrainingFlag()
    trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=[posix, flag])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "posix" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert all(entry["posix"] > 0 for entry in logged)
    assert logged[1]["posix"] == pytest.approx(posix.last_result.posix)
    assert flag.seen == [True, True]  # the callback put the model back in train mode


def test_exemplar_flags_without_a_pool_are_refused(smol_path, tmp_path, capsys):
    from wit_plugin.cli import main

    prompts = write_prompt_sets(tmp_path / "sets.jsonl", [[CAPITAL, SKY]])
    base = ["posix", "--model", str(smol_path), "--prompts", str(prompts), "--max-new-tokens", "1"]
    for extra, named in ((["--exemplars", "none,cross"], "--exemplars"), (["--shots", "2"], "--shots")):
        assert main([*base, *extra]) == 2  # not a plain POSIX run
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0] and "without --pool" in err[0], err


def test_model_and_device_errors_are_one_line(smol_path, tmp_path, capsys):
    """Checked before the model loads (and, for the folder, before torch is imported): exit code 2, one line."""
    from wit_plugin.cli import main

    prompts = write_prompt_sets(tmp_path / "sets.jsonl", [[CAPITAL, SKY]])
    unfinished = tmp_path / "run"
    (unfinished / "checkpoint-1").mkdir(parents=True)
    missing = tmp_path / "no" / "such" / "model"
    cases = [
        (missing, f"no model folder at {missing}"),
        (unfinished, f"no model in {unfinished}: it has neither config.json nor adapter_config.json (unfinished run?)"),
    ]
    for folder, message in cases:
        for command in ("posix", "crosstask"):
            files = (
                ["--prompts", str(prompts)]
                if command == "posix"
                else ["--pool", str(prompts), "--targets", str(prompts)]
            )
            assert main([command, "--model", str(folder), *files]) == 2
            assert capsys.readouterr().err.strip().splitlines() == [f"wit {command}: error: {message}"]
    device = "cuda:99" if torch.cuda.is_available() else "cuda"  # a device this machine's torch cannot use
    assert main(["posix", "--model", str(smol_path), "--prompts", str(prompts), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wit posix: error: device '{device}': "), err


def test_replies_of_one_token_are_flagged(smol, smol_path, tmp_path, capsys):
    """ψ of a one-token reply rests on one token's probability: counted per set, in all, and noted on screen."""
    from wit_plugin.cli import main

    model, tokenizer = smol
    sets = [[CAPITAL, MIXED_SET[1]], [SKY, SKY.lower()]]
    short = evaluate_posix(model, sets, tokenizer, max_new_tokens=1)
    assert [s.short_replies for s in short.sets] == [2, 2] and short.short_replies == 4
    assert short.to_dict()["short_replies"] == 4 and short.to_dict()["sets_with_short_replies"] == [0, 1]
    assert [s["short_replies"] for s in short.to_dict()["sets"]] == [2, 2]
    longer = evaluate_posix(model, sets, tokenizer, max_new_tokens=4)
    expected = sum(len(r.token_ids) <= 1 for s in longer.sets for r in s.responses)
    assert longer.short_replies == expected < 4  # the model writes out most answers
    prompts = write_prompt_sets(tmp_path / "sets.jsonl", sets)
    trace = tmp_path / "trace.json"
    argv = ["posix", "--model", str(smol_path), "--prompts", str(prompts), "--max-new-tokens", "1", "--out", str(trace)]
    assert main([*argv, "--device", "cpu"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "note: 4 of 4 replies are at most 1 token long (EOS included), in 2 of 2 sets (0, 1)" in shown
    assert json.loads(trace.read_text())["short_replies"] == 4


def test_exemplar_trace_holds_the_plain_trace_per_condition(smol_path, tmp_path, capsys):
    """docs/posix.md's exemplar trace: settings, notes, and per condition the plain trace plus set indices and
    demos, so a reader (or a plot) takes every condition's ψ per set the way it reads a plain run."""
    from wit_plugin.cli import main

    pool = tmp_path / "pool.jsonl"
    rows = [
        {"task": "capitals", "input": "Country: Italy\nCapital:", "label": "Rome"},
        {
            "task": "capitals",
            "input": "Country: Spain\nCapital:",
            "label": "Madrid",
            "options": ["Madrid", "Rome", "Rome"],
        },
        {"task": "colours", "input": "The colour of snow is", "label": "white"},
    ]
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompts = tmp_path / "sets.jsonl"
    prompts.write_text(
        json.dumps({"task": "capitals", "input": "Question: Country: Norway\nCapital:\nAnswer:", "label": "Oslo"})
        + "\n"
    )
    trace = tmp_path / "trace.json"
    argv = ["posix", "--model", str(smol_path), "--prompts", str(prompts), "--pool", str(pool), "--select", "lexical"]
    argv += ["--num-variants", "2", "--max-new-tokens", "2", "--out", str(trace), "--device", "cpu"]
    assert main(argv) == 0
    shown = " ".join(capsys.readouterr().out.split())
    data = json.loads(trace.read_text())
    assert set(data) == {"exemplars", "conditions", "notes", "resume"}  # resume: what the same command reuses
    assert data["exemplars"] == {"conditions": ["none", "cross", "in-task"], "shots": 1, "select": "lexical", "seed": 0}
    assert list(data["conditions"]) == ["none", "cross", "in-task"]
    plain = {"posix", "psi_definition", "max_new_tokens", "short_replies", "sets_with_short_replies", "work", "sets"}
    for name, condition in data["conditions"].items():
        assert set(condition) == plain | {"set_indices", "demos"}, name
        assert condition["set_indices"] == [0] and len(condition["sets"]) == 1
        assert condition["posix"] == pytest.approx(condition["sets"][0]["psi"])
    assert data["conditions"]["none"]["demos"] == [[]]
    assert [d["task"] for d in data["conditions"]["cross"]["demos"][0]] == ["colours"]
    note = f"pool: 1 row(s) list an option twice, kept once: {pool}:2"  # a pool quirk does not stop the run
    assert note in data["notes"] and note in shown


# --- which psi: the paper's Eq. 1, or the package prompt-sensitivity-index 0.0.1's ---------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The authors' package, its wheel fetched from the index into a temporary folder and imported from there."""
    try:
        return load_reference(tmp_path_factory.mktemp("prompt_sensitivity_index"))
    except ReferenceUnavailable as reason:
        pytest.skip(f"the reference package cannot run offline here: {reason}")


def package_psi(matrix, max_new_tokens: int) -> float:
    """The package's psi written out: prompt j, responses i and j under it, over max_new_tokens."""
    n = len(matrix)
    total = sum(abs(matrix[j][i] - matrix[j][j]) / max_new_tokens for i in range(n) for j in range(n))
    return total / (n * (n - 1))


def test_psi_definitions_against_the_package_and_eq1_in_float64(smol, smol_path, reference):
    """``package`` reproduces the authors' package run on the same model; ``paper`` equals Eq. 1 from float64
    one-pair-at-a-time log-probs. The package takes text, so chat prompts go in as their rendered template."""
    posix_module, models = reference
    model, tokenizer = smol
    chat = lambda text: tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    sets = [[chat(CAPITAL), chat(CAPITAL.lower()), f"Q: {CAPITAL}\nA:"]]  # N = 3: the pair orders differ
    max_new_tokens = 10
    theirs, trace = posix_module.get_prompt_sensitivity(
        models.HFModel(str(smol_path), dtype=torch.float32), sets, posix_module.PosixConfig(max_new_tokens)
    )
    package = evaluate_posix(model, sets, tokenizer, max_new_tokens, psi_definition="package")
    paper = evaluate_posix(model, sets, tokenizer, max_new_tokens, psi_definition="paper")
    assert (package.psi_definition, paper.psi_definition) == ("package", "paper")
    lengths = [len(r.token_ids) for result in paper.sets for r in result.responses]
    assert len(set(lengths)) > 1 and max(lengths) < max_new_tokens  # L(y_j) and max_new_tokens both differ
    for index, (ours, mine) in enumerate(zip(package.sets, paper.sets)):
        decoded = [tokenizer.decode(r.token_ids, skip_special_tokens=False) for r in ours.responses]
        assert decoded == trace.responses[index]  # the same greedy responses, token for token
        assert ours.logprobs == pytest.approx(torch.tensor(trace.logprob_matrices[index]).numpy(), rel=1e-4, abs=1e-4)
        assert ours.psi == pytest.approx(trace.prompt_sensitivities[index], rel=1e-4)
        sizes = [len(r.token_ids) for r in ours.responses]
        matrix = trace.logprob_matrices[index]  # on the package's own matrix, its value to the last bits
        assert psi(matrix, sizes, "package", max_new_tokens) == pytest.approx(package_psi(matrix, max_new_tokens))
        assert package_psi(matrix, max_new_tokens) == pytest.approx(trace.prompt_sensitivities[index], rel=1e-12)

        assert mine.responses == ours.responses and (mine.logprobs == ours.logprobs).all()  # only psi differs
        inputs = [render_prompt(tokenizer, prompt) for prompt in mine.prompts]
        expected = [[reference_logprob(model, x, list(y.token_ids)) for y in mine.responses] for x in inputs]
        assert mine.psi == pytest.approx(reference_psi(expected, sizes), rel=1e-4)
    assert paper.psis[0] != pytest.approx(package.psis[0], rel=0.1)
    assert package.posix == pytest.approx(theirs, rel=1e-4) and package.to_dict()["psi_definition"] == "package"


def test_cli_psi_is_recorded_in_the_trace(smol_path, tmp_path, capsys):
    from wit_plugin.cli import main

    prompts = write_prompt_sets(tmp_path / "sets.jsonl", [[CAPITAL, MIXED_SET[0]]])
    argv = ["posix", "--model", str(smol_path), "--prompts", str(prompts), "--max-new-tokens", "4"]
    traces = {}
    for chosen in ("package", None):
        trace = tmp_path / f"{chosen}.json"
        assert main(argv + ["--out", str(trace)] + (["--psi", chosen] if chosen else [])) == 0
        traces[chosen] = json.loads(trace.read_text())
        assert f"(ψ: {chosen or 'paper'})" in capsys.readouterr().out
    assert [traces[k]["psi_definition"] for k in traces] == ["package", "paper"]
    for chosen in ("package", None):
        (item,) = traces[chosen]["sets"]
        lengths = [len(r["token_ids"]) for r in item["responses"]]
        expected = package_psi(item["logprobs"], 4) if chosen else reference_psi(item["logprobs"], lengths)
        assert item["psi"] == pytest.approx(expected, rel=1e-12) and traces[chosen]["posix"] == item["psi"]
    assert traces["package"]["posix"] != pytest.approx(traces[None]["posix"], rel=1e-3)
    with pytest.raises(SystemExit, match="2"):
        main(argv + ["--psi", "eq1"])
    assert "--psi 'eq1'; choose from paper, package" in capsys.readouterr().err


def test_callback_options_choose_psi(tmp_path):
    path = write_prompt_sets(tmp_path / "sets.jsonl", [[SKY, CAPITAL]])
    (default,) = evaluation_callbacks({"wit_posix_prompts": str(path)})
    (package,) = evaluation_callbacks({"wit_posix_prompts": str(path), "wit_posix_psi": "package"})
    assert (default.settings.psi_definition, package.settings.psi_definition) == ("paper", "package")
    with pytest.raises(OptionError, match=r"\['wit_posix_psi'\] set without `wit_posix_prompts`"):
        evaluation_callbacks({"wit_posix_psi": "package"})
    with pytest.raises(OptionError, match="unknown wit_posix_psi 'eq1'; choose from paper, package"):
        evaluation_callbacks({"wit_posix_prompts": str(path), "wit_posix_psi": "eq1"})
