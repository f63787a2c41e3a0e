"""The ``wit`` subcommands' console."""

from __future__ import annotations

import sys
from typing import Any

PIPED_WIDTH = 200  # a log or a pipe gets whole table rows instead of rich's default 80 columns


def make_console() -> Any:
    """A rich console as wide as the terminal, or :data:`PIPED_WIDTH` when the output is not a terminal: tables
    written to a log keep their headers and numbers on one line each."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
