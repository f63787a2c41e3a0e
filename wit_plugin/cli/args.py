"""Argument types shared by the ``wit`` subcommands, checked while parsing (before any model is loaded)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Precisions a model is evaluated in. float32 by default: every model in a table is then scored the same way,
# whatever dtype its checkpoint was saved in ("auto" keeps the checkpoint's).
DTYPES = ("float32", "bfloat16", "float16", "auto")


def int_at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    convert.__name__ = "int"
    return convert


positive_int = int_at_least(1)  # a count
non_negative_int = int_at_least(0)  # an index


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--dtype``, the same on every command that evaluates a model."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core; use 1 on a shared machine)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="precision the model is loaded and evaluated in (default float32; auto: the checkpoint's own)",
    )


def apply_threads(threads: int | None) -> None:
    """Sets torch's CPU thread count before any model is loaded (``--threads``)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    logger.info("torch uses %d CPU thread%s", threads, "" if threads == 1 else "s")
