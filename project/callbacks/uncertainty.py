"""`UncertaintyPlots`: is the model's uncertainty worth anything?

Each epoch, two figures and one scalar:
- error rate vs predictive entropy: samples sorted by entropy into equal-count bins, with the
  error rate of each bin. A useful uncertainty rises from left to right.
- a reliability diagram: accuracy against confidence in equal-width bins; a calibrated model follows
  the diagonal. Its expected calibration error (torchmetrics) is logged as `<stage>/ece`.

Per batch only three small vectors are appended on the device (torchmetrics `CatMetric`); the
states are gathered from every DDP rank when the epoch ends.
"""

from __future__ import annotations

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
    """Equal-count bins of samples sorted by entropy: mean entropy, error rate, count per bin.
    Bins differ in size by at most one sample; fewer samples than bins gives one bin per sample."""
    order = torch.argsort(entropy, stable=True)
    bins = []
    for chunk in torch.tensor_split(order, min(num_bins, len(order))):
        bins.append(
            {
                "entropy": entropy[chunk].mean().item(),
                "error_rate": 1.0 - correct[chunk].float().mean().item(),
                "count": len(chunk),
            }
        )
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
    def __init__(
        self,
        entropy_bins: int = 10,
        calibration_bins: int = 15,
        stages: tuple[str, ...] = ("val", "test"),
        every_n_epochs: int = 1,
    ) -> None:
        """
        Args:
            entropy_bins: number of equal-count entropy bins.
            calibration_bins: number of equal-width confidence bins (also used for the ECE).
            stages: "val", "test" or both.
            every_n_epochs: see `EpochCallback`.
        """
        super().__init__(stages, every_n_epochs)
        if entropy_bins < 1 or calibration_bins < 1:
            raise UserError("entropy_bins and calibration_bins must be at least 1")
        self.num_entropy_bins = entropy_bins
        self.num_calibration_bins = calibration_bins
        self.entropy = CatMetric()
        self.correct = CatMetric()
        self.confidence = CatMetric()
        self.ece: MulticlassCalibrationError | None = None

    def reset(self, pl_module: pl.LightningModule) -> None:
        if self.ece is None:
            self.ece = MulticlassCalibrationError(num_classes(pl_module), n_bins=self.num_calibration_bins)
        for metric in (self.entropy, self.correct, self.confidence, self.ece):
            metric.to(pl_module.device).reset()

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        label = example.require_label()
        assert self.ece is not None
        self.entropy.update(prediction.entropy)
        self.correct.update((prediction.pred == label).float())
        self.confidence.update(prediction.confidence)
        self.ece.update(prediction.probs, label)

    def emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog) -> None:
        assert self.ece is not None
        if self.ece.update_count == 0:
            return
        # compute() gathers from every rank: all ranks take part, only rank 0 draws.
        entropy, correct, confidence = (
            m.compute().cpu() for m in (self.entropy, self.correct, self.confidence)
        )
        ece = float(self.ece.compute())
        out.scalar("ece", ece)
        if not out.enabled:
            return
        by_entropy = entropy_bins(entropy, correct, self.num_entropy_bins)
        by_confidence = reliability_bins(confidence, correct, self.num_calibration_bins)
        out.json("uncertainty", {"ece": ece, "entropy_bins": by_entropy, "reliability_bins": by_confidence})
        out.figure("error_vs_entropy", plot_error_vs_entropy(by_entropy, len(entropy)))
        out.figure("reliability", plot_reliability(by_confidence, ece, self.num_calibration_bins))


def plot_error_vs_entropy(bins: list[dict[str, float]], total: int):  # type: ignore[no-untyped-def]
    fig = new_figure()
    ax = fig.subplots()
    ax.plot([b["entropy"] for b in bins], [b["error_rate"] for b in bins], marker="o")
    ax.set_xlabel("predictive entropy (nats), mean of bin")
    ax.set_ylabel("error rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Error rate vs entropy ({len(bins)} equal-count bins, {total} samples)", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def plot_reliability(bins: list[dict[str, float]], ece: float, num_bins: int):  # type: ignore[no-untyped-def]
    fig = new_figure()
    ax = fig.subplots()
    width = 1.0 / num_bins
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability (ECE {ece:.3f})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return fig
