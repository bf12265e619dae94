"""`ConfusionMatrix`: which classes are mistaken for which, on the epochs drawn (see base.py).

Accumulated on the device by torchmetrics' `MulticlassConfusionMatrix` (summed over DDP ranks when
the epoch ends) and drawn twice with the DataModule's class names: raw counts, and normalized by
row (each true class sums to 1, so rare classes read as clearly as common ones). Zero cells stay
blank and the numbers are sized to their cells; beyond 20 classes only the colours and the class
names on the ticks remain (`plot_confusion`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
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
            # Predictions are argmaxes, labels the model's cross-entropy already accepted: no per-batch
            # checks (each a host sync).
            self.matrix = MulticlassConfusionMatrix(num_classes(pl_module), validate_args=False)
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


NUMBERED_UP_TO = 20  # classes; beyond, cells are too small for numbers and the colours tell it


def plot_confusion(values: Tensor, names: list[str], title: str) -> Figure:
    """A heatmap (rows: true class, columns: predicted) labelled with the class names. Up to
    NUMBERED_UP_TO classes each non-zero cell carries its number (counts as integers, rates with two
    decimals), sized to fit its cell; zero cells stay blank. Text is one size throughout.

    Laid out by hand in inches (every size here is known up front): a layout engine would measure
    every cell's text again at each draw, ~40 % of the drawing time."""
    n = len(names)
    cell_in = 0.5 if n <= NUMBERED_UP_TO else max(0.12, 10.0 / n)  # inches
    label_size = min(8.0, cell_in * 72 * 0.7)  # points: a tick label no taller than its cell
    longest = max(map(len, names))
    upright = longest <= 3
    tick_in = 0.12 + longest * 0.62 * label_size / 72  # tick mark, pad, the widest class name
    left = 0.3 + tick_in  # the "true" label, then the tick labels
    bottom = 0.3 + (0.12 + label_size / 72 if upright else tick_in)
    side, top, right = n * cell_in, 0.35, 0.9  # the matrix; title; colour bar with its numbers
    fig = new_figure(left + side + right, bottom + side + top, layout=None)
    width, height = fig.get_size_inches()
    ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
    colorbar_box = (
        (left + side + 0.15) / width,
        (bottom + 0.1 * side) / height,
        0.15 / width,
        0.8 * side / height,
    )
    data = values.float().numpy()
    image = ax.imshow(data, cmap="Blues", vmin=0)
    fig.colorbar(image, cax=fig.add_axes(colorbar_box)).ax.tick_params(labelsize=8)
    ax.set_xticks(range(n), names, fontsize=label_size, rotation=0 if upright else 90)
    ax.set_yticks(range(n), names, fontsize=label_size)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=9)
    if n <= NUMBERED_UP_TO:
        integers = not values.is_floating_point()
        texts = {(i, j): f"{int(v)}" if integers else f"{v:.2f}" for (i, j), v in np.ndenumerate(data) if v}
        widest = max(map(len, texts.values()), default=1)
        size = min(8.0, cell_in * 72 * 0.9 / (0.62 * widest))  # a digit is ~0.6 em wide
        threshold = data.max() / 2
        for (i, j), text in texts.items():
            ax.text(j, i, text, ha="center", va="center", fontsize=size,
                    color="white" if data[i, j] > threshold else "black")  # fmt: skip
    return fig
