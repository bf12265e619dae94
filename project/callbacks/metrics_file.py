"""`FinalMetricsFile`: each fit, validate and test writes its final metrics to `metrics.json` in
the run directory (the Trainer's `default_root_dir`), merged into what the file already holds.

    {"epoch": 30, "global_step": 690, "train/acc": 0.99, "val/acc": 0.997, "val/loss": 0.012,
     "best_checkpoint": "runs/<run>/checkpoints/best-epoch027.ckpt", "best_score": 0.997,
     "test/acc": 0.969, ...}

After fit: the last epoch's train and validation metrics, and the best checkpoint with its score.
The test that follows a fit adds its own metrics, as do `validate` and `test` runs. Only rank 0
writes, to a temporary file renamed over the old one, so the file is never half-written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from project.files import atomic_write


class FinalMetricsFile(pl.Callback):
    """Writes each fit's, validate's and test's final metrics to metrics.json in the run directory."""

    def __init__(self, filename: str = "metrics.json") -> None:
        self.filename = filename

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = final_metrics(trainer)
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") or None
        if best:
            score = getattr(checkpoint, "best_model_score", None)
            metrics |= {"best_checkpoint": best, "best_score": None if score is None else float(score)}
        self.write(trainer, metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # not the validation epochs within a fit
            self.write(trainer, final_metrics(trainer))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer, final_metrics(trainer))

    def write(self, trainer: pl.Trainer, metrics: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / self.filename
        previous = json.loads(path.read_text()) if path.is_file() else {}
        with atomic_write(path) as f:
            f.write(json.dumps(previous | metrics, indent=2, sort_keys=True) + "\n")


def final_metrics(trainer: pl.Trainer) -> dict[str, Any]:
    """The values logged so far in this stage, with the epoch and step they were reached at."""
    logged = trainer.callback_metrics
    # A value logged on step and epoch appears as `x`, `x_step` and `x_epoch`; `x` is the epoch value.
    metrics = {
        k: float(v)
        for k, v in logged.items()
        if not (k.endswith(("_step", "_epoch")) and k.rsplit("_", 1)[0] in logged)
    }
    return {"epoch": trainer.current_epoch, "global_step": trainer.global_step} | metrics
