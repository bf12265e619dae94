"""The digits demo as a user runs it, whole process, with the visual callbacks and without them.

    venv/bin/python benchmarks/demo.py [--repeats 2]

`python -m project fit --config configs/digits.yaml` (30 epochs, then its test) against the same config
with its `callbacks+: visuals.yaml` line removed, alternating, each a fresh process (imports, W&B offline,
checkpoints, the test after fit: everything). Prints the median wall time of each arm with its spread
(min-max), the ratio of medians, and the val/test accuracy each arm reached (the visuals must cost time
only, never accuracy). Target: ratio <= 1.15 (issue 13).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, median, report

DEMO = REPO / "configs" / "digits.yaml"
VISUALS_LINE = "callbacks+: visuals.yaml"


def run(config: Path, root: Path) -> tuple[float, dict[str, float]]:
    """Wall time of one whole fit process, and the metrics.json it wrote."""
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "project", "fit", "--config", str(config), "--trainer.default_root_dir",
               str(root)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    (metrics,) = root.glob("*/metrics.json")
    return seconds, json.loads(metrics.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    text = DEMO.read_text()
    assert VISUALS_LINE in text, f"{DEMO} no longer appends the visuals with `{VISUALS_LINE}`"
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "digits.yaml"  # beside nothing: the line naming visuals.yaml is gone
        plain.write_text("".join(line for line in text.splitlines(True) if VISUALS_LINE not in line))
        configs = {"all visual callbacks": DEMO, "no visual callbacks": plain}
        times: dict[str, list[float]] = {arm: [] for arm in configs}
        accuracy: dict[str, list[tuple[float, float]]] = {arm: [] for arm in configs}
        for repeat in range(args.repeats):
            for arm, config in configs.items():
                seconds, metrics = run(config, Path(tmp) / f"{arm}-{repeat}".replace(" ", "_"))
                times[arm].append(seconds)
                accuracy[arm].append((metrics["val/acc"], metrics["test/acc"]))
    base = median(times["no visual callbacks"])
    rows = [
        {
            "arm": arm,
            "median (s)": median(values),
            "min-max (s)": f"{min(values):.1f}-{max(values):.1f}",
            "ratio": median(values) / base,
            "val/acc (min)": min(val for val, _ in accuracy[arm]),
            "test/acc (min)": min(test for _, test in accuracy[arm]),
        }
        for arm, values in times.items()
    ]
    columns = ["arm", "median (s)", "min-max (s)", "ratio", "val/acc (min)", "test/acc (min)"]
    report("demo", rows, columns, note="target: ratio <= 1.15 (whole process, 30 epochs + test)")


if __name__ == "__main__":
    main()
