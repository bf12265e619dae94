"""`ConfusionMatrix`: which classes are mistaken for which, on the epochs drawn (see base.py).

Accumulated on the device by torchmetrics' `MulticlassConfusionMatrix` (summed over DDP ranks when
the epoch ends) and drawn twice with the DataModule's class names: raw counts, and normalized by
row (each true class sums to 1, so rare classes read as clearly as common ones). Zero cells stay
blank and the numbers are sized to their cells; beyond 20 classes only the colours, with a colour
bar, and the class names on the ticks remain (`plot_confusion`).
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
    from matplotlib.axes import Axes
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
    decimals), sized to fit its cell, and zero cells stay blank; beyond, the colours and a colour bar
    tell it. Text is one size throughout.

    Laid out by hand in inches (every size here is known up front): a layout engine would measure
    every text again at each draw. The class names, axis labels and title are figure texts at those
    inches (tagged with their role as gid: "predicted", "true", "label", "title"), and the tick marks
    one line of markers per axis: matplotlib's own ticks cost ~1 ms each to build and measure, two
    thirds of this figure's drawing time."""
    from matplotlib.markers import TICKDOWN, TICKLEFT

    n = len(names)
    numbered = n <= NUMBERED_UP_TO
    cell_in = 0.5 if numbered else max(0.12, 10.0 / n)  # inches
    label_size = min(8.0, cell_in * 72 * 0.7)  # points: a class name no taller than its cell
    longest = max(map(len, names))
    upright = longest <= 3
    mark_in = 0.1  # tick mark and gap before a class name
    name_in = longest * 0.62 * label_size / 72  # the widest class name (a character is ~0.6 em wide)
    left = 0.3 + mark_in + name_in  # the "true" label, then the class names
    bottom = 0.3 + mark_in + (label_size / 72 if upright else name_in)
    side, top = n * cell_in, 0.35  # the matrix; the title
    right = 0.15 if numbered else 0.9  # a colour bar with its numbers only when the cells have none
    fig = new_figure(left + side + right, bottom + side + top, layout=None)
    width, height = fig.get_size_inches()

    def place(x: float, y: float, words: str, role: str, **style: object) -> None:  # x, y in inches
        fig.text(x / width, y / height, words, gid=role, **style)  # type: ignore[arg-type]

    def axes_at(x: float, y: float, w: float, h: float) -> Axes:  # in inches
        return fig.add_axes((x / width, y / height, w / width, h / height))

    ax = axes_at(left, bottom, side, side)
    data = values.float().numpy()
    image = ax.imshow(data, cmap="Blues", vmin=0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    cells = range(n)
    ax.plot(cells, [n - 0.5] * n, linestyle="", marker=TICKDOWN, color="black", clip_on=False)
    ax.plot([-0.5] * n, cells, linestyle="", marker=TICKLEFT, color="black", clip_on=False)
    for i, name in enumerate(names):
        centre = (i + 0.5) * cell_in  # from the matrix's left (columns) or top (rows) edge
        place(left + centre, bottom - mark_in, name, "predicted", ha="center", va="top",
             rotation=0 if upright else 90, fontsize=label_size)  # fmt: skip
        place(left - mark_in, bottom + side - centre, name, "true", ha="right", va="center",
             fontsize=label_size)  # fmt: skip
    place(left + side / 2, 0.08, "predicted", "label", ha="center", va="bottom", fontsize=8)
    place(0.08, bottom + side / 2, "true", "label", ha="left", va="center", rotation=90, fontsize=8)
    place(left + side / 2, bottom + side + top - 0.1, title, "title", ha="center", va="top", fontsize=9)
    if not numbered:
        colorbar_axes = axes_at(left + side + 0.15, bottom + 0.1 * side, 0.15, 0.8 * side)
        fig.colorbar(image, cax=colorbar_axes).ax.tick_params(labelsize=8)
        return fig
    integers = not values.is_floating_point()
    texts = {(i, j): f"{int(v)}" if integers else f"{v:.2f}" for (i, j), v in np.ndenumerate(data) if v}
    widest = max(map(len, texts.values()), default=1)
    size = min(8.0, cell_in * 72 * 0.9 / (0.62 * widest))
    threshold = data.max() / 2
    for (i, j), text in texts.items():
        ax.text(j, i, text, ha="center", va="center", fontsize=size,
                color="white" if data[i, j] > threshold else "black")  # fmt: skip
    return fig
