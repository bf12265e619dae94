"""`ConfusionMatrix`: which classes are mistaken for which, on the epochs drawn (see base.py).

Accumulated on the device by torchmetrics' `MulticlassConfusionMatrix` (summed over DDP ranks when
the epoch ends) and drawn twice with the DataModule's class names: raw counts, and normalized by
row (each true class sums to 1, so rare classes read as clearly as common ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytorch_lightning as pl
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from project.callbacks.base import EpochCallback
from project.callbacks.display import class_names, num_classes
from project.callbacks.visual_log import VisualLog, new_figure
from project.structs import Example, Prediction

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class ConfusionMatrix(EpochCallback):
    """Draws which classes are mistaken for which, on the drawn epochs and at test (counts and rates)."""

    def __init__(
        self,
        stages: tuple[str, ...] = ("val", "test"),
        every_n_epochs: int = 0,
    ) -> None:
        """
        Args:
            stages: "val", "test" or both.
            every_n_epochs: see `EpochCallback`.
        """
        super().__init__(stages, every_n_epochs)
        self.matrix: MulticlassConfusionMatrix | None = None

    def reset(self, pl_module: pl.LightningModule) -> None:
        if self.matrix is None:
            self.matrix = MulticlassConfusionMatrix(num_classes(pl_module))
        self.matrix.to(pl_module.device).reset()

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        assert self.matrix is not None
        self.matrix.update(prediction.pred, example.require_label())

    def emit(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog
    ) -> tuple[Tensor, list[str]] | None:
        assert self.matrix is not None
        if self.matrix.update_count == 0:
            return None
        counts = self.matrix.compute().cpu()  # summed over every rank: all ranks take part
        return counts, class_names(trainer, pl_module)

    def draw(self, drawing: tuple[Tensor, list[str]], out: VisualLog) -> None:
        counts, names = drawing
        normalized = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
        out.json("confusion_matrix", {"classes": names, "counts": counts.tolist()})
        for name, values, title in (
            ("confusion_matrix", counts, "counts"),
            ("confusion_matrix_normalized", normalized, "normalized by true class"),
        ):
            out.figure(name, plot_confusion(values, names, f"Confusion matrix, {title}"))


def plot_confusion(values: Tensor, names: list[str], title: str) -> Figure:
    """A labelled heatmap (rows: true class, columns: predicted), drawn by torchmetrics' plotter."""
    size = 1.2 + 0.4 * len(names)
    fig = new_figure(size, size)
    ax = fig.subplots()
    # Cell numbers stop being readable (and cost most of the drawing time) beyond ~30 classes.
    MulticlassConfusionMatrix(len(names)).plot(val=values, ax=ax, labels=names, add_text=len(names) <= 30)
    ax.set_title(title, fontsize=10)
    return fig
