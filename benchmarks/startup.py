"""Start-up cost of the command line: `python -m project --help` against `import pytorch_lightning`.

    venv/bin/python benchmarks/startup.py [--repeats 5]

Both run as fresh processes, alternating; the figure is the difference of the medians, with each
command's spread (min-max). Target (issue 13): at most +0.3 s. The --help path imports nothing heavy
that Lightning itself does not (tests/test_cli.py checks: no wandb, optuna, scikit-learn, tensorboard).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _common import REPO, median, report

COMMANDS = {
    "import pytorch_lightning": [sys.executable, "-c", "import pytorch_lightning"],
    "python -m project --help": [sys.executable, "-m", "project", "--help"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for command in COMMANDS.values():
        wall(command)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall(command))
    base = median(times["import pytorch_lightning"])
    rows = [
        {
            "command": name,
            "median (s)": median(values),
            "min-max (s)": f"{min(values):.2f}-{max(values):.2f}",
            "extra (s)": median(values) - base,
        }
        for name, values in times.items()
    ]
    report(
        "startup", rows, ["command", "median (s)", "min-max (s)", "extra (s)"], note="target: extra <= +0.3 s"
    )


if __name__ == "__main__":
    main()
