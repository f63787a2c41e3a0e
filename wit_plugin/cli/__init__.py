"""The ``wit`` command: one subcommand module each, registered here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import yaml

from wit_plugin import __version__
from wit_plugin.cli import compare, crosstask, inspect_rows, posix, prepare, tasks, tune

SUBCOMMANDS = (prepare, inspect_rows, posix, crosstask, compare, tune, tasks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wit", description="Weighted Instruction Tuning tools.")
    parser.add_argument("--version", action="version", version=f"wit_plugin {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


# Third-party log lines that are noise on this command line: torchao failing to load kernels this machine has no
# use for, torch deprecation notices about torchao's enums.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


class _OursOrWarnings(logging.Filter):
    """wit_plugin's INFO lines; other packages' warnings and errors only (their INFO/DEBUG is noise here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("wit_plugin") or record.levelno >= logging.WARNING


class _CurrentStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was when ``wit`` started: a stderr
    redirected or captured later (``contextlib.redirect_stderr``, a test's capture) gets the lines, and a closed
    one is never written to."""

    @property
    def stream(self) -> object:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:  # StreamHandler.__init__ assigns one: ignored
        pass


def configure_logging() -> None:
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OursOrWarnings())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Axolotl's logging set-up (once imported in this process) gives every non-Axolotl logger a filter that lets
    # only warnings through: wit_plugin's INFO lines (progress, results) would vanish.
    logging.setLoggerClass(logging.Logger)
    for name, existing in logging.root.manager.loggerDict.items():
        if name.startswith("wit_plugin") and isinstance(existing, logging.Logger):
            existing.filters.clear()


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:  # what finished is already saved (wit_plugin.evaluation.resume): no traceback
        from wit_plugin.evaluation.resume import interrupted_message

        print(interrupted_message(args.command, getattr(args, "out", None)), file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, yaml.YAMLError) as error:  # bad input, missing files or packages
        print(f"wit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
