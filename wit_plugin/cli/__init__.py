"""The ``wit`` command: one subcommand module each, registered here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import yaml

from wit_plugin import __version__
from wit_plugin.cli import inspect, posix, prepare

SUBCOMMANDS = (prepare, inspect, posix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wit", description="Weighted Instruction Tuning tools.")
    parser.add_argument("--version", action="version", version=f"wit_plugin {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError, ImportError, yaml.YAMLError) as error:  # bad input, missing files or packages
        print(f"wit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
