"""What every benchmark shares: a quiet, reproducible setting and one way to report.

Every figure is a ratio (or a side by side) of two things measured in the same run, alternating
between them, as the median of repeats (`paired`: the median of per-repeat ratios): the machine is
shared and noisy, absolute times are not comparable across runs, ratios mostly are.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def quiet() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {device}, torch {torch.__version__}"


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], digits: int = 1) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def paired(values: list[float], baseline: list[float]) -> str:
    """The median of the per-repeat ratios values[i] / baseline[i], with their min-max: each pair was
    measured seconds apart, so a machine whose speed drifts between repeats moves both, not the ratio."""
    ratios = [value / base for value, base in zip(values, baseline, strict=True)]
    return f"{median(ratios):.2f} ({spread(ratios, 2)})"


def report(name: str, rows: list[dict[str, Any]], columns: list[str], note: str = "") -> None:
    """Print `rows` as a table and write them with the machine to benchmarks/results/<name>.json."""
    widths = [max(len(c), *(len(_cell(row.get(c))) for row in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(_cell(row.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))
    if note:
        print(note)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "rows": rows, "note": note}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
