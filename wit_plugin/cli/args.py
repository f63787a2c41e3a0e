"""Argument types shared by the ``wit`` subcommands, checked while parsing (before any model is loaded)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
