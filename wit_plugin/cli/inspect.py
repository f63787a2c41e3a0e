"""``wit inspect``: a dataset row's tokens coloured by role, with the weights the loss gives them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from wit_plugin.inspect import inspect_tokens, render_html, render_rich, render_table
from wit_plugin.integrations.axolotl.strategies import MODULE_FORMATS, STOCK_TYPE_MODULES
from wit_plugin.roles import PRESETS, WEIGHT_KEYS, RoleWeights
from wit_plugin.tagging import RoleTagger


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show a dataset row's tokens coloured by role, with their loss weights",
        description=(
            "Tag one row the way training will, and show each token's role and weight. Give a JSONL file "
            "and a tokenizer, or an Axolotl YAML (its base model, first dataset and wit_* keys)."
        ),
    )
    parser.add_argument("data", nargs="?", type=Path, help="JSONL dataset (omit with --config)")
    parser.add_argument("--config", type=Path, help="Axolotl YAML to take tokenizer, dataset and weights from")
    parser.add_argument("--tokenizer", help="tokenizer folder (default with --config: its base_model)")
    parser.add_argument("--row", type=int, default=0, help="row index (default 0)")
    parser.add_argument("--format", dest="row_format", help="chat, alpaca, prompt_completion, text (default: detect)")
    parser.add_argument("--chat-template", type=Path, help="Jinja chat template file overriding the tokenizer's")
    parser.add_argument("--preset", choices=PRESETS, help="weight preset (default wit)")
    parser.add_argument("--prompt-weight", type=float, help="λp: template, system, instruction")
    parser.add_argument("--response-weight", type=float, help="λr: response, end of turn")
    parser.add_argument("--tokens", action="store_true", help="also print one line per token")
    parser.add_argument("--html", type=Path, help="write a standalone HTML page here")
    parser.set_defaults(run=run)


def _read_row(path: Path, index: int) -> dict[str, Any]:
    with path.open() as handle:
        for number, line in enumerate(handle):
            if number == index:
                return json.loads(line)
    raise ValueError(f"{path} has no row {index}")


def _from_config(args: argparse.Namespace) -> tuple[Path, str | None, str | None, dict[str, Any]]:
    cfg = yaml.safe_load(args.config.read_text())
    dataset = (cfg.get("datasets") or [{}])[0]
    if not dataset.get("path"):
        raise ValueError(f"{args.config} has no datasets[0].path")
    kind = str(dataset.get("type") or "chat_template").rsplit(".", 1)[-1]  # stock type or strategy module
    row_format = MODULE_FORMATS.get(STOCK_TYPE_MODULES.get(kind, kind))
    tokenizer = cfg.get("tokenizer_config") or cfg.get("base_model")
    options = {key: cfg.get(key) for key in WEIGHT_KEYS}
    return Path(dataset["path"]), row_format, tokenizer, options


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    options: dict[str, Any] = {}
    data, row_format, tokenizer_path = args.data, args.row_format, args.tokenizer
    if args.config:
        data, config_format, config_tokenizer, options = _from_config(args)
        row_format = row_format or config_format
        tokenizer_path = tokenizer_path or config_tokenizer
    if data is None or tokenizer_path is None:
        raise ValueError("give a JSONL file and --tokenizer, or --config")
    options.update(
        {
            k: v
            for k, v in {
                "wit_preset": args.preset,
                "wit_prompt_weight": args.prompt_weight,
                "wit_response_weight": args.response_weight,
            }.items()
            if v is not None
        }
    )
    weights = RoleWeights.from_options(options)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    template = args.chat_template.read_text() if args.chat_template else None
    tagger = RoleTagger(tokenizer, row_format, **({"chat_template": template} if template else {}))
    tokens = inspect_tokens(tokenizer, tagger.tag(_read_row(data, args.row)), weights)
    console = Console()
    console.rule(f"{data} row {args.row} · {tagger.format_name} · {weights.describe()}")
    console.print(render_rich(tokens, weights))
    if args.tokens:
        console.print(render_table(tokens))
    if args.html:
        args.html.write_text(render_html(tokens, weights, title=f"{data.name} row {args.row}"))
        console.print(f"wrote {args.html}")
    return 0
