"""``wit inspect``: a dataset row's tokens coloured by role, with the weights the loss gives them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from wit_plugin.evaluation.prompts import read_jsonl
from wit_plugin.inspect import inspect_tokens, render_html, render_rich, render_table
from wit_plugin.integrations.axolotl.strategies import MODULE_FORMATS
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
    parser.add_argument("data", nargs="?", type=Path, help="JSONL dataset (default with --config: its first dataset)")
    parser.add_argument("--config", type=Path, help="Axolotl YAML to take tokenizer, dataset and weights from")
    parser.add_argument(
        "--tokenizer", help="tokenizer folder (default with --config: its tokenizer_config, else base_model)"
    )
    parser.add_argument("--row", type=int, default=0, help="row index, blank lines not counted (default 0)")
    parser.add_argument("--format", dest="row_format", help="chat, alpaca, prompt_completion, text (default: detect)")
    parser.add_argument("--chat-template", type=Path, help="Jinja chat template file overriding the tokenizer's")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="weight preset, replacing the config's weights (default: the config's, or wit)",
    )
    parser.add_argument("--prompt-weight", type=float, help="λp: template, system, instruction")
    parser.add_argument("--response-weight", type=float, help="λr: response, end of turn")
    parser.add_argument("--tokens", action="store_true", help="also print one line per token")
    parser.add_argument("--html", type=Path, help="write a standalone HTML page here")
    parser.set_defaults(run=run)


def _read_row(path: Path, index: int) -> dict[str, Any]:
    """Row ``index`` of a JSONL file, blank lines skipped; bad lines are named by file and line."""
    for number, (_, row) in enumerate(read_jsonl(path)):
        if number == index:
            return row
    raise ValueError(f"{path} has no row {index}")


def _from_config(raw: dict[str, Any], path: Path, tokenizer: Any) -> tuple[Path, RoleTagger, dict[str, Any]]:
    """Dataset path, the tagger training builds for ``datasets[0]``, and the config's weight keys.

    The config goes through the plugin's own checks and type mapping first, so what is shown is what
    ``axolotl train`` would tag (or the error it would stop with).
    """
    from axolotl.utils.dict import DictDefault

    from wit_plugin.integrations.axolotl.plugin import AXOLOTL_SEQUENCE_LEN, check_config, map_dataset_types
    from wit_plugin.integrations.axolotl.strategies import dataset_tagger

    cfg = DictDefault(raw)
    check_config(cfg)
    map_dataset_types(cfg)
    cfg.sequence_len = cfg.sequence_len or AXOLOTL_SEQUENCE_LEN  # as Axolotl fills it in before tagging
    dataset = (cfg.get("datasets") or [{}])[0]
    if not dataset.get("path"):
        raise ValueError(f"{path} has no datasets[0].path")
    row_format = MODULE_FORMATS[str(dataset["type"]).rsplit(".", 1)[-1]]
    tagger = dataset_tagger(tokenizer, cfg, dataset, row_format)
    return Path(dataset["path"]), tagger, {key: cfg.get(key) for key in WEIGHT_KEYS}


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    raw = (yaml.safe_load(args.config.read_text()) or {}) if args.config else {}
    tokenizer_path = args.tokenizer or raw.get("tokenizer_config") or raw.get("base_model")
    if (args.data is None and args.config is None) or tokenizer_path is None:
        raise ValueError("give a JSONL file and --tokenizer, or --config")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except OSError as error:
        raise ValueError(
            f"cannot load a tokenizer from {tokenizer_path!r} (offline, give a local folder): {error}"
        ) from None
    template = args.chat_template.read_text() if args.chat_template else None
    options: dict[str, Any] = {}
    if args.config:
        config_data, tagger, options = _from_config(raw, args.config, tokenizer)
        data = args.data or config_data
        if args.row_format or template:
            raise ValueError("--format and --chat-template come from the config with --config; drop them")
    else:
        data = args.data
        tagger = RoleTagger(tokenizer, args.row_format, **({"chat_template": template} if template else {}))
    if args.preset is not None:  # a preset chosen here replaces the config's weights, not just its preset
        options = {"wit_preset": args.preset}
    cli_weights = {"wit_prompt_weight": args.prompt_weight, "wit_response_weight": args.response_weight}
    options.update({key: value for key, value in cli_weights.items() if value is not None})
    weights = RoleWeights.from_options(options)
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
