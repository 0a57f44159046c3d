"""How long `--help` takes for the command and each job, in fresh processes (median of N).

    python benchmarks/cli_help.py [--repeat 3] [--root OTHER_CHECKOUT]

Each command runs in a new interpreter, as a user would start it; the figure is wall time from
start to exit, so it includes Python's own start-up (about 0.05 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["-m", "spatialdreamer.cli.main", "--help"],
    ["-m", "spatialdreamer.cli.main", "manifest", "--help"],
    ["-m", "spatialdreamer.cli.main", "convert", "--help"],
    ["-m", "pipelines.build_dataset", "--help"],
    ["-m", "pipelines.train", "--help"],
    ["-m", "pipelines.evaluate", "--help"],
]


def time_command(args: list[str], repeat: int, root: Path) -> float:
    times = []
    env = os.environ | {"PYTHONPATH": str(root)}
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (default: 3)")
    parser.add_argument(
        "--root", type=Path, action="append", help="checkout(s) to time, side by side (default: this one)"
    )
    args = parser.parse_args()
    roots = args.root or [ROOT]
    print(f"{'command':<40}" + "".join(f" {r.name[:14]:>14}" for r in roots) + "   (median s)")
    for command in COMMANDS:
        shown = " ".join(command[1:]).replace("spatialdreamer.cli.main", "spatialdreamer")
        times = [time_command(command, args.repeat, root) for root in roots]
        print(f"{shown:<40}" + "".join(f" {t:>14.2f}" for t in times))


if __name__ == "__main__":
    main()
