"""``wit inspect``: dataset rows' tokens coloured by role, with the weights the loss gives them, as training
will see them (the config's tokenizer and added tokens, its tagger, its length handling)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wit_plugin import options
from wit_plugin.cli.args import non_negative_int
from wit_plugin.roles import GROUP_KEYS

WEIGHT_FLAGS = ("wit_preset", *GROUP_KEYS)
PLUGIN = "wit_plugin.WITPlugin"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show dataset rows' tokens coloured by role, with their loss weights",
        description=(
            "Tag rows the way training will, and show each token's role and weight. Give a JSONL file and a "
            "tokenizer, or an Axolotl YAML (its tokenizer with the config's added tokens, a dataset, the wit_* keys "
            "and what sequence_len does to a long row)."
        ),
    )
    parser.add_argument("data", nargs="?", type=Path, help="JSONL dataset (default with --config: its dataset)")
    parser.add_argument("--config", type=Path, help="Axolotl YAML to take tokenizer, dataset and weights from")
    parser.add_argument(
        "--dataset", type=non_negative_int, default=0, help="with --config: which of its datasets (default 0)"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder (default with --config: the config's)")
    parser.add_argument(
        "--row",
        type=non_negative_int,
        action="append",
        help="row index, blank lines not counted; repeat for several rows (default 0)",
    )
    parser.add_argument("--format", dest="row_format", help="chat, alpaca, prompt_completion, text (default: detect)")
    parser.add_argument("--chat-template", type=Path, help="Jinja chat template file overriding the tokenizer's")
    options.add_arguments(parser, WEIGHT_FLAGS, unset="the config's, else the wit preset")
    parser.add_argument("--tokens", action="store_true", help="also print one line per token")
    parser.add_argument("--html", type=Path, help="write a standalone HTML page here")
    parser.add_argument("--json", type=Path, help='write {"rows": [{"tokens": [{"id", "text", "role", "weight"}]}]}')
    parser.set_defaults(run=run)


@dataclass
class Setup:
    """What the rows are tagged with: the training tagger, and what training does to a long row."""

    data: Path
    tagger: Any
    weights: Any
    sequence_len: int | None = None
    truncates: bool = False
    chunks: bool = False  # raw text: cut into sequence_len rows


def _rows(path: Path, indices: list[int]) -> dict[int, tuple[int, dict[str, Any]]]:
    """Rows ``indices`` of a JSONL file (blank lines skipped) with their line numbers."""
    from wit_plugin.jsonl import read_jsonl

    wanted, found, count = set(indices), {}, 0
    for count, (line, row) in enumerate(read_jsonl(path), start=1):
        if count - 1 in wanted:
            found[count - 1] = (line, row)
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{path} has no row {missing[0]} (it has {count} row{'' if count == 1 else 's'})")
    return found


def _check_plugin_listed(raw: dict[str, Any], path: Path) -> None:
    """Axolotl silently drops keys it does not know: wit_* keys without the plugin train unweighted."""
    keys = sorted(key for key in raw if str(key).startswith("wit_"))
    plugins = raw.get("plugins") or []
    if keys and not any("wit_plugin" in str(plugin) for plugin in plugins):
        raise ValueError(
            f"{path} sets {keys} but has no `plugins: [{PLUGIN}]`: Axolotl would ignore those keys and train "
            "without the role weights"
        )


def _from_config(args: argparse.Namespace) -> Setup:
    """The tagger ``axolotl train`` builds for ``datasets[args.dataset]``, after the plugin's own checks."""
    import yaml
    from axolotl.loaders.tokenizer import load_tokenizer
    from axolotl.utils.dict import DictDefault

    from wit_plugin.compat import axolotl_sequence_len
    from wit_plugin.integrations.axolotl.dataset_types import (
        dataset_format,
        dataset_tagger,
        map_dataset_types,
        truncates,
    )
    from wit_plugin.integrations.axolotl.plugin import check_config

    raw = yaml.safe_load(args.config.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{args.config} is not a YAML mapping")  # noqa: TRY004 - bad input file, exit 2
    _check_plugin_listed(raw, args.config)
    cfg = DictDefault(raw)
    try:
        check_config(cfg)
        map_dataset_types(cfg)
    except ValueError as error:
        raise ValueError(f"{args.config}: {error}") from None
    cfg.sequence_len = axolotl_sequence_len(cfg)  # as Axolotl fills it in before tagging
    cfg.tokenizer_config = args.tokenizer or cfg.tokenizer_config or cfg.base_model
    if not cfg.tokenizer_config:
        raise ValueError(f"{args.config} names no base_model or tokenizer_config")
    datasets = cfg.get("datasets") or []
    if args.dataset >= len(datasets):
        raise ValueError(f"{args.config} has {len(datasets)} dataset(s); --dataset {args.dataset} does not exist")
    dataset = datasets[args.dataset]
    if not dataset.get("path") and args.data is None:
        raise ValueError(f"{args.config}: datasets[{args.dataset}] has no path")
    if args.data is None and not Path(dataset["path"]).is_file():
        raise ValueError(
            f"{args.config}: datasets[{args.dataset}].path {dataset['path']} is not a file (a relative path is read "
            "from the folder you run in; or name the file as the first argument)"
        )
    try:
        tokenizer = load_tokenizer(cfg)  # the config's tokens, special tokens and overrides, as in training
    except OSError as error:
        raise ValueError(f"cannot load the tokenizer {cfg.tokenizer_config!r}: {error}") from None
    row_format = dataset_format(dataset)
    tagger = dataset_tagger(tokenizer, cfg, dataset, row_format)
    tagger.max_length = None  # shown whole, then cut as training does
    weights = {key: cfg.get(key) for key in options.OPTION_BY_NAME if key in cfg}
    return Setup(
        args.data or Path(dataset["path"]),
        tagger,
        weights,
        cfg.sequence_len,
        truncates(cfg),
        chunks=row_format == "text",
    )


def _standalone(args: argparse.Namespace) -> Setup:
    from transformers import AutoTokenizer

    from wit_plugin.tagging import RoleTagger

    if args.data is None or args.tokenizer is None:
        raise ValueError("give a JSONL file and --tokenizer, or --config")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    except OSError as error:
        raise ValueError(f"cannot load a tokenizer from {args.tokenizer!r} (offline, give a local folder): {error}")
    template = args.chat_template.read_text() if args.chat_template else None
    tagger = RoleTagger(tokenizer, args.row_format, **({"chat_template": template} if template else {}))
    return Setup(args.data, tagger, {})


def _fate(setup: Setup, length: int) -> str:
    """What training does to a row of ``length`` tokens."""
    if setup.sequence_len is None or length <= setup.sequence_len:
        return "kept"
    if setup.chunks:
        return f"cut into {-(-length // setup.sequence_len)} rows of at most {setup.sequence_len} tokens"
    if setup.truncates:
        return f"truncated at {setup.sequence_len} of {length} tokens (shown truncated)"
    return f"DROPPED by training: {length} tokens > sequence_len {setup.sequence_len}"


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from wit_plugin.cli.console import make_console
    from wit_plugin.tagging import TaggingError
    from wit_plugin.tagging.messages import weight_field_hint
    from wit_plugin.token_view import inspect_tokens, render_html, render_rich, render_table

    if args.config and (args.row_format or args.chat_template):
        raise ValueError("--format and --chat-template come from the config with --config; drop them")
    setup = _from_config(args) if args.config else _standalone(args)
    chosen = {key: getattr(args, key) for key in WEIGHT_FLAGS}
    if chosen["wit_preset"] is not None:  # a preset chosen here replaces the config's weights, not just its preset
        setup.weights = {}
    setup.weights.update({key: value for key, value in chosen.items() if value is not None})
    schedules = options.check_weights(setup.weights)
    weights = schedules.initial  # a scheduled weight is shown at the start of training (its schedule below)
    indices = args.row or [0]
    console, sections, records = make_console(), [], []
    for index, (line, row) in sorted(_rows(setup.data, indices).items()):
        where = f"{setup.data}:{line}"
        try:
            tagged = setup.tagger.tag(row)
        except TaggingError as error:
            raise TaggingError(f"{where}: {error}") from None
        fate = _fate(setup, len(tagged.input_ids))
        if setup.truncates and setup.sequence_len and len(tagged.input_ids) > setup.sequence_len:
            tagged = tagged.truncated(setup.sequence_len)
        tokens = inspect_tokens(tagged, weights)
        title = f"{where} (row {index}) · {setup.tagger.format_name} · {fate}"
        console.rule(escape(f"{where} (row {index})"))
        console.print(escape(f"{setup.tagger.format_name} row, {len(tokens)} tokens: {fate}"), highlight=False)
        console.print(render_rich(tokens, weights))
        for name in tagged.unread:
            hint = weight_field_hint(name.rsplit(".", 1)[-1])
            console.print(escape(f"message key {name}: read by no row format nor the chat template (no effect){hint}"))
        if tagged.dropped:
            console.print(escape(f"dropped (the chat template does not render them): {', '.join(tagged.dropped)}"))
        if tagged.turns_without_end:
            console.print(f"[yellow]{tagged.turns_without_end} assistant turn(s) without an end-of-turn text[/]")
        if args.tokens:
            console.print(render_table(tokens))
        sections.append((title, tokens))
        records.append({"row": index, "source": where, "fate": fate, "tokens": [t.to_dict() for t in tokens]})
    shown = "" if schedules.constant else f" (at the start of training; schedules: {schedules.describe()})"
    console.print(escape(f"weights: {weights.describe()}{shown}"))
    if args.html:
        args.html.write_text(render_html(sections, weights), encoding="utf-8")
        console.print(f"wrote {args.html}")
    if args.json:
        args.json.write_text(json.dumps({"rows": records}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0
