"""Figures that do not mislead (issue 18): the reliability diagram shows how many samples each bar
holds, error rate vs entropy keeps a confident model's bins apart, and test plots are filed under
the checkpoint that was tested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from project.callbacks import UncertaintyPlots
from project.callbacks.uncertainty import (
    entropy_bins,
    plot_error_vs_entropy,
    plot_reliability,
    reliability_bins,
)
from project.data import DigitsDataModule
from project.model import ConvNet


def confident_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """100 samples: 95 at confidence 0.99 (94 right), 3 at 0.55 and 2 at 0.35 (all wrong); the
    entropies of the 90 most confident are all below 1e-3, those of the 10 others near 1."""
    confidence = torch.tensor([0.99] * 95 + [0.55] * 3 + [0.35] * 2)
    correct = torch.tensor([1] * 94 + [0] * 6)
    gen = torch.Generator().manual_seed(0)
    entropy = torch.cat([torch.rand(90, generator=gen) * 1e-3, 0.5 + torch.rand(10, generator=gen)])
    return confidence, correct, entropy


def test_reliability_bars_show_their_counts_and_near_empty_bins_are_hollow() -> None:
    confidence, correct, _ = confident_batch()
    bins = reliability_bins(confidence, correct, num_bins=10)
    assert [(b["low"], b["count"]) for b in bins] == [(0.3, 2), (0.5, 3), (0.9, 95)]
    ax = plot_reliability(bins, ece=0.1, num_bins=10, min_count=5).axes[0]
    assert [text.get_text() for text in ax.texts] == ["2", "3", "95"]  # one count above each bar
    fills = [bar.get_facecolor()[3] for bar in ax.patches]  # alpha of each bar's fill
    assert fills[0] == fills[1] == 0 and fills[2] > 0.5  # 2 and 3 samples: hollow; 95: filled


def test_error_vs_entropy_keeps_equal_count_bins_apart_on_a_confident_model() -> None:
    _, correct, entropy = confident_batch()
    bins = entropy_bins(entropy, correct, num_bins=10)
    assert [b["count"] for b in bins] == [10] * 10
    # 9 of the 10 bins have a mean entropy below 1e-3: drawn at their entropy, they would overlap.
    assert sum(b["entropy"] < 1e-3 for b in bins) == 9
    (line,) = plot_error_vs_entropy(bins, total=100).axes[0].lines
    assert np.diff(line.get_xdata()) == pytest.approx([0.1] * 9)  # evenly spaced by rank
    labels = [label.get_text() for label in plot_error_vs_entropy(bins, 100).axes[0].get_xticklabels()]
    assert labels == [f"{b['entropy']:.2g}" for b in bins]  # each bin's mean entropy is still given


def test_test_plots_are_filed_under_the_checkpoint_tested(tmp_path: Path) -> None:
    """Fit two epochs keeping the best by val/acc, then test it: the plots name that checkpoint, not
    the epoch the Trainer stopped at."""
    pl.seed_everything(0)
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best-epoch{epoch:03d}",
                           auto_insert_metric_name=False, monitor="val/acc", mode="max")  # fmt: skip
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=2,
        limit_val_batches=2,
        limit_test_batches=2, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[best, UncertaintyPlots(stages=("val", "test"))],
    )  # fmt: skip
    datamodule = DigitsDataModule(batch_size=32)
    trainer.fit(ConvNet(10, (1, 8, 8)), datamodule=datamodule)
    assert (tmp_path / "plots/val/epoch_0/reliability.png").is_file()  # during fit: the epoch's weights
    trainer.test(datamodule=datamodule, ckpt_path="best", verbose=False)
    tested = Path(best.best_model_path).stem
    assert tested == "best-epoch000"
    assert sorted(p.name for p in (tmp_path / "plots/test").iterdir()) == [tested]
    assert (tmp_path / "plots/test" / tested / "reliability.png").is_file()


def test_uncertainty_figures_keep_every_text_on_the_canvas() -> None:
    """Their margins are fixed (no layout engine, for speed): with the longest labels they get (tick labels
    like 1.2e-07, six-digit sample counts) no text leaves the canvas, and the title, axis labels and tick
    labels around the axes overlap neither each other nor the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    confidence, correct, entropy = confident_batch()
    tiny = [b | {"entropy": 1.2345e-07 * (i + 1)} for i, b in enumerate(entropy_bins(entropy, correct, 10))]
    figures = [
        plot_error_vs_entropy(tiny, total=123_456),
        plot_reliability(reliability_bins(confidence, correct, 10), ece=0.123, num_bins=10, min_count=100),
    ]
    for fig in figures:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        (ax,) = fig.axes
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ticks = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
        ticks += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]  # the ones drawn
        outer = [ax.title, ax.xaxis.label, ax.yaxis.label, *ticks]
        inner = [*ax.texts, *(legend.texts if (legend := ax.get_legend()) else [])]
        for text in outer + inner:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, (
                text
            )
        boxes = [text.get_window_extent(renderer) for text in outer if text.get_text()]
        assert not any(box.overlaps(ax.bbox) for box in boxes)
        assert not any(a.overlaps(b) for n, a in enumerate(boxes) for b in boxes[n + 1 :])
