"""`UncertaintyPlots`: is the model's uncertainty worth anything? Add it to `trainer.callbacks`.

Two figures on each drawn epoch (the schedule: base.py), and one scalar every epoch:
- error rate vs predictive entropy: samples sorted by entropy into equal-count bins, with the
  error rate of each bin, drawn evenly spaced by rank (ticks give each bin's mean entropy), so a
  confident model's many near-zero entropies do not pile up in one spot. A useful uncertainty rises
  from left to right.
- a reliability diagram: accuracy against confidence in equal-width bins; a calibrated model follows
  the diagonal. Each bar is labelled with its number of samples, and a bin holding fewer than
  `min_bin_count` is drawn hollow: its accuracy says little. Its expected calibration error
  (torchmetrics) is logged as `<stage>/ece`.

Per batch only three small vectors are appended on the device (torchmetrics `CatMetric`); the
states are gathered from every DDP rank when the epoch ends. The bins (`entropy_bins`,
`reliability_bins`) are computed apart from the drawing (`plot_*`), and saved beside the PNGs as JSON.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import CatMetric
from torchmetrics.classification import MulticlassCalibrationError

from project.callbacks.base import EpochCallback
from project.callbacks.display import num_classes
from project.callbacks.visual_log import VisualLog, new_figure
from project.errors import UserError
from project.structs import Example, Prediction


def entropy_bins(entropy: Tensor, correct: Tensor, num_bins: int) -> list[dict[str, float]]:
    """Equal-count bins of samples sorted by entropy: mean entropy, error rate, count per bin, and
    `rank`, the bin's middle as a fraction of the samples (where the plot puts it).
    Bins differ in size by at most one sample; fewer samples than bins gives one bin per sample."""
    order = torch.argsort(entropy, stable=True)
    bins = []
    start = 0
    for chunk in torch.tensor_split(order, min(num_bins, len(order))):
        bins.append(
            {
                "entropy": entropy[chunk].mean().item(),
                "error_rate": 1.0 - correct[chunk].float().mean().item(),
                "count": len(chunk),
                "rank": (start + len(chunk) / 2) / len(order),
            }
        )
        start += len(chunk)
    return bins


def reliability_bins(confidence: Tensor, correct: Tensor, num_bins: int) -> list[dict[str, float]]:
    """Equal-width confidence bins over [0, 1]: mean confidence, accuracy, count (empty bins left out)."""
    which = (confidence * num_bins).long().clamp(max=num_bins - 1)
    bins = []
    for b in range(num_bins):
        mask = which == b
        if mask.any():
            bins.append(
                {
                    "low": b / num_bins,
                    "confidence": confidence[mask].mean().item(),
                    "accuracy": correct[mask].float().mean().item(),
                    "count": int(mask.sum()),
                }
            )
    return bins


class UncertaintyPlots(EpochCallback):
    """Draws error rate vs entropy and a reliability diagram, and logs the calibration error (ece)."""

    def __init__(
        self,
        entropy_bins: int = 10,
        calibration_bins: int = 15,
        stages: tuple[str, ...] = ("val", "test"),
        every_n_epochs: int = 0,
        min_bin_count: int = 10,
    ) -> None:
        """
        Args:
            entropy_bins: number of equal-count entropy bins.
            calibration_bins: number of equal-width confidence bins (also used for the ECE).
            stages: "val", "test" or both.
            every_n_epochs: see `EpochCallback`.
            min_bin_count: reliability bins with fewer samples are drawn hollow (too few to judge).
        """
        super().__init__(stages, every_n_epochs)
        if entropy_bins < 1 or calibration_bins < 1:
            raise UserError("entropy_bins and calibration_bins must be at least 1")
        if min_bin_count < 0:
            raise UserError(f"min_bin_count must be at least 0, got {min_bin_count}")
        self.num_entropy_bins = entropy_bins
        self.num_calibration_bins = calibration_bins
        self.min_bin_count = min_bin_count
        # No per-batch NaN check (a host sync each time, and dropping NaNs would misalign the three).
        self.entropy = CatMetric(nan_strategy="disable")
        self.correct = CatMetric(nan_strategy="disable")
        self.confidence = CatMetric(nan_strategy="disable")
        self.ece: MulticlassCalibrationError | None = None

    def reset(self, pl_module: pl.LightningModule) -> None:
        if self.ece is None:
            # Softmax probabilities, labels the model's cross-entropy already accepted: no per-batch checks
            # (each a host sync).
            self.ece = MulticlassCalibrationError(
                num_classes(pl_module), n_bins=self.num_calibration_bins, validate_args=False
            )
        for metric in (self.entropy, self.correct, self.confidence, self.ece):
            metric.to(pl_module.device).reset()

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        label = example.require_label()
        assert self.ece is not None
        self.entropy.update(prediction.entropy)
        self.correct.update((prediction.pred == label).float())
        self.confidence.update(prediction.confidence)
        self.ece.update(prediction.probs, label)

    def emit(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog
    ) -> dict[str, Any] | None:
        assert self.ece is not None
        if self.ece.update_count == 0:
            return None
        # compute() gathers from every rank: all ranks take part, only rank 0 keeps them for drawing.
        entropy, correct, confidence = (m.compute() for m in (self.entropy, self.correct, self.confidence))
        ece = float(self.ece.compute())
        out.scalar("ece", ece)
        if not out.enabled:
            return None
        return {"ece": ece, "entropy": entropy, "correct": correct, "confidence": confidence}

    def draw(self, drawing: dict[str, Any], out: VisualLog) -> None:
        # The bins are worked out only for the epochs drawn.
        entropy, correct, confidence = (drawing[k].cpu() for k in ("entropy", "correct", "confidence"))
        bins = {
            "entropy_bins": entropy_bins(entropy, correct, self.num_entropy_bins),
            "reliability_bins": reliability_bins(confidence, correct, self.num_calibration_bins),
        }
        out.json("uncertainty", {"ece": drawing["ece"]} | bins)
        out.figure("error_vs_entropy", plot_error_vs_entropy(bins["entropy_bins"], len(entropy)))
        out.figure(
            "reliability",
            plot_reliability(
                bins["reliability_bins"], drawing["ece"], self.num_calibration_bins, self.min_bin_count
            ),
        )


# Margins of both 5 x 4 inch figures, fixed: a layout engine would measure every text again at each draw,
# more than half of the drawing time. Room for the y tick labels and label, the title, and below the
# axes the x label (and the entropy plot's rotated tick labels, at most "1.3e-07" long).
MARGINS = {"left": 0.13, "right": 0.97, "top": 0.92}


def plot_error_vs_entropy(bins: list[dict[str, float]], total: int):  # type: ignore[no-untyped-def]
    fig = new_figure(layout=None)
    fig.subplots_adjust(bottom=0.2, **MARGINS)
    ax = fig.subplots()
    # By rank, not by entropy value: equal-count bins stay apart on a confident model.
    ranks = [b["rank"] for b in bins]
    ax.plot(ranks, [b["error_rate"] for b in bins], marker="o")
    ax.set_xticks(ranks, [f"{b['entropy']:.2g}" for b in bins], rotation=45, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("predictive entropy (nats), mean of bin; bins spaced by rank")
    ax.set_ylabel("error rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Error rate vs entropy ({len(bins)} equal-count bins, {total} samples)", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def plot_reliability(  # type: ignore[no-untyped-def]
    bins: list[dict[str, float]], ece: float, num_bins: int, min_count: int = 10
):
    fig = new_figure(layout=None)
    fig.subplots_adjust(bottom=0.12, **MARGINS)
    ax = fig.subplots()
    width = 1.0 / num_bins
    few = [b["count"] < min_count for b in bins]
    bars = ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
                  color=[(0, 0, 0, 0) if f else (0.12, 0.47, 0.71, 0.7) for f in few],
                  edgecolor="black", label="accuracy (number: samples)")  # fmt: skip
    for bar, hollow in zip(bars, few, strict=True):
        if hollow:
            bar.set_linestyle(":")
    ax.bar_label(bars, labels=[str(b["count"]) for b in bins], fontsize=7)  # samples per bin
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)  # room for the counts above full bars
    ax.set_title(f"Reliability (ECE {ece:.3f}); samples per bar, hollow: fewer than {min_count}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return fig
