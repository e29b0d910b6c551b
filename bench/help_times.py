"""How long `semcode <command> --help` takes for every command (a fresh process each; best of --repeat).

    .venv/bin/python bench/help_times.py --repeat 3

The goal (issue 16): every --help under 1 s, which holds while torch, transformers and kfp are imported
only when a command runs. Prints a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from semcode.cli import COMMANDS


def help_seconds(command: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "semcode.cli", command, "--help"], check=True, capture_output=True
        )
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"| command | --help seconds (best of {args.repeat}) |\n|---|---|")
    for command in COMMANDS:
        print(f"| {command} | {help_seconds(command, args.repeat):.2f} |")


if __name__ == "__main__":
    main()
