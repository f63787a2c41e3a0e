"""``wit --help`` and every subcommand's ``--help``: wall time, beside a bare Python start-up measured in the same
run (what no command line can go below), and beside importing torch (what it would cost to import it eagerly).

    python bench/cli.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

SUBCOMMANDS = ("prepare", "inspect", "posix", "crosstask", "compare")


def seconds(command: list[str], repeats: int) -> float:
    """Median wall time of ``command`` (output discarded)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = [sys.executable]
    bare = seconds([*python, "-c", "pass"], args.repeats)
    torch = seconds([*python, "-c", "import torch"], args.repeats)
    print(f"python -c pass:        {bare:6.3f} s")
    print(f"python -c 'import torch': {torch:6.3f} s")
    for command in [[], *([name] for name in SUBCOMMANDS)]:
        took = seconds([*python, "-m", "wit_plugin.cli", *command, "--help"], args.repeats)
        label = " ".join(["wit", *command, "--help"])
        print(f"{label:24s} {took:6.3f} s  ({took / bare:.1f}x a bare start-up, {took / torch:.2f}x importing torch)")


if __name__ == "__main__":
    main()
