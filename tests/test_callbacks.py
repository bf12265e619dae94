"""Visualization callbacks: the top-k merge, binning, drawing, the epoch life cycle, the real W&B and
TensorBoard outputs (equality of a 2-process DDP run with a 1-process run: tests/test_distributed.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from project.callbacks import EpochCallback, TopKExamples, VisualLog
from project.callbacks.confusion import plot_confusion
from project.callbacks.display import caption, display_images
from project.callbacks.top_k import Ranked, merge, top_k
from project.callbacks.uncertainty import entropy_bins, reliability_bins
from project.cli import main
from project.data import CIFAR10DataModule, DigitsDataModule
from project.model import ConvNet
from project.structs import Example, Prediction
from tests.conftest import CONFIGS, REPO, cli_args, own_wandb_service, read_wandb_summary

DIGITS = str(CONFIGS / "digits.yaml")
LIMIT = str(CONFIGS / "debug" / "limit.yaml")
CAPTION = re.compile(r"^true: \d · pred: \d \(\d\.\d\d\) · loss \d+\.\d\d$")
FIGURES = [
    "top_k",
    "bottom_k",
    "error_vs_entropy",
    "reliability",
    "confusion_matrix",
    "confusion_matrix_normalized",
]


def ranked(scores: list[float], indices: list[int]) -> Ranked:
    n = len(scores)
    return Ranked(
        score=torch.tensor(scores),
        index=torch.tensor(indices),
        label=torch.zeros(n, dtype=torch.long),
        pred=torch.zeros(n, dtype=torch.long),
        confidence=torch.ones(n),
        entropy=torch.zeros(n),
        image=torch.arange(n, dtype=torch.float).view(n, 1, 1, 1),  # image i carries its position
    )


# ---- the top-k merge ------------------------------------------------------------------------------


def test_top_k_orders_by_score_then_index() -> None:
    r = ranked([1.0, 3.0, 3.0, 2.0, 3.0], [10, 7, 5, 8, 6])
    best = top_k(r, 4)
    assert best.index.tolist() == [5, 6, 7, 8]  # the three 3.0s by index, then 2.0
    assert best.score.tolist() == [3.0, 3.0, 3.0, 2.0]
    assert best.image.flatten().tolist() == [2.0, 4.0, 1.0, 3.0]  # payload travels with its sample
    assert top_k(r, 2, largest=False).index.tolist() == [10, 8]


def test_top_k_with_k_larger_than_the_set_or_zero() -> None:
    r = ranked([0.5, 0.1], [1, 2])
    assert top_k(r, 10).index.tolist() == [1, 2]
    assert len(top_k(r, 0)) == 0
    assert len(top_k(ranked([], []), 3)) == 0


def test_top_k_counts_a_repeated_sample_once_and_drops_padding() -> None:
    r = ranked([5.0, 5.0, 4.0, 9.0, 1.0], [3, 3, 4, -1, 2])
    assert top_k(r, 3).index.tolist() == [3, 4, 2]
    assert top_k(r, 5).index.tolist() == [3, 4, 2, -1, -1]  # a fixed length: padding fills the end
    assert top_k(r, 5).real().index.tolist() == [3, 4, 2]
    assert top_k(r, 5, largest=False).real().index.tolist() == [2, 4, 3]


def test_streaming_top_k_equals_top_k_of_everything() -> None:
    """Merging batch by batch (as the callback does) gives the same sets as ranking all at once, with
    ties and repeated samples (a DistributedSampler's padding) in the stream."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, k = int(torch.randint(1, 60, (1,), generator=gen)), int(torch.randint(0, 12, (1,), generator=gen))
        scores = torch.randint(0, 6, (n,), generator=gen).float()  # many ties
        indices = torch.arange(n)
        repeated = torch.randint(0, n, (n // 5,), generator=gen)  # the same sample again, same score
        everything = ranked(
            torch.cat([scores, scores[repeated]]).tolist(), torch.cat([indices, repeated]).tolist()
        )
        highest: Ranked | None = None
        lowest: Ranked | None = None
        for chunk in torch.split(torch.randperm(len(everything), generator=gen), 7):
            highest, lowest = merge(highest, lowest, everything.take(chunk), k)
        assert highest is not None and lowest is not None
        assert highest.real().index.tolist() == top_k(everything, k).real().index.tolist()
        assert lowest.real().index.tolist() == top_k(everything, k, largest=False).real().index.tolist()
        assert highest.real().score.tolist() == top_k(everything, k).real().score.tolist()
        assert len(highest.real()) == min(k, n)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_per_batch_work_of_the_visual_callbacks_never_waits_for_the_gpu() -> None:
    """No host sync in any callback's update (torch raises on one in this debug mode)."""
    from project.callbacks import ConfusionMatrix, UncertaintyPlots

    module = ConvNet(10, (1, 8, 8)).cuda()
    n = torch.arange(16, device="cuda")
    example = Example(image=torch.randn(16, 1, 8, 8, device="cuda"), label=n % 10, index=n)
    prediction = Prediction(logits=torch.randn(16, 10, device="cuda"))
    callbacks = [TopKExamples(k=4), UncertaintyPlots(), ConfusionMatrix()]
    for callback in callbacks:
        callback.reset(module)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            for callback in callbacks:
                callback.update(example, prediction, module)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- binning, captions, display --------------------------------------------------------------------


def test_entropy_bins_are_equal_count_with_the_right_error_rates() -> None:
    entropy = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8])
    correct = torch.tensor([0, 1, 1, 1, 0, 1, 0])
    bins = entropy_bins(entropy, correct, num_bins=3)
    assert [b["count"] for b in bins] == [3, 2, 2]
    # sorted by entropy: (0.1,1) (0.2,1) (0.3,1) | (0.5,1) (0.7,0) | (0.8,0) (0.9,0)
    assert [b["error_rate"] for b in bins] == pytest.approx([0.0, 0.5, 1.0])
    assert [b["entropy"] for b in bins] == pytest.approx([0.2, 0.6, 0.85])
    assert len(entropy_bins(entropy[:2], correct[:2], num_bins=10)) == 2


def test_reliability_bins_cover_zero_to_one() -> None:
    confidence = torch.tensor([0.05, 0.95, 1.0, 0.55, 0.51])
    correct = torch.tensor([0, 1, 0, 1, 0])
    bins = reliability_bins(confidence, correct, num_bins=10)
    assert [(b["low"], b["count"]) for b in bins] == [(0.0, 1), (0.5, 2), (0.9, 2)]  # 1.0 in the last bin
    assert [b["accuracy"] for b in bins] == pytest.approx([0.0, 0.5, 0.5])


def test_caption_format() -> None:
    assert caption("cat", "dog", 0.934, 3.2149) == "true: cat · pred: dog (0.93) · loss 3.21"


def test_display_images_undo_normalization_and_enlarge_small_images() -> None:
    class FakeTrainer:
        datamodule = DigitsDataModule()

    raw = torch.tensor([[0.0, 0.5], [1.0, 0.25]]).view(1, 1, 2, 2)
    normalized = (raw - DigitsDataModule.mean[0]) / DigitsDataModule.std[0]
    (image,) = display_images(normalized, FakeTrainer())  # type: ignore[arg-type]
    assert image.dtype == np.uint8 and image.shape == (64, 64)  # grey, enlarged pixel for pixel
    assert image[0, 0] == 0 and image[0, 63] == 128 and image[63, 0] == 255 and image[63, 63] == 64


def test_confusion_plot_is_labelled_with_class_names() -> None:
    names = ["cat", "dog", "bird"]
    fig = plot_confusion(torch.tensor([[5, 1, 0], [0, 3, 2], [1, 0, 4]]), names, "title")
    (ax,) = fig.axes  # numbered cells: no colour bar
    assert tagged(fig, "predicted") == names and tagged(fig, "true") == names
    assert tagged(fig, "label") == ["predicted", "true"] and tagged(fig, "title") == ["title"]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "2", "3", "4", "5"]  # zero cells blank


def tagged(fig: Any, role: str) -> list[str]:
    """The texts of a confusion plot with one role (its gid): class names along "predicted" (below the
    matrix, left to right) or "true" (beside it, top to bottom), axis "label"s, the "title"."""
    return [t.get_text() for t in fig.texts if t.get_gid() == role]


def rendered_texts(fig: Any) -> list[Any]:
    """The cell texts of a drawn figure, each with its box on the canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    return [(t, t.get_window_extent(renderer)) for t in ax.texts]


def assert_laid_out(fig: Any) -> None:
    """Every piece of text on the canvas, and none overlaps another outside the matrix: the title, the
    axis labels, the class names and the colour bar's numbers (the plot is laid out by hand)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax, *colorbar = fig.axes
    outer = [*fig.texts] + [t for bar in colorbar for t in bar.get_yticklabels() if t.get_text()]
    assert {t.get_gid() for t in fig.texts} == {"predicted", "true", "label", "title"}
    boxes = [t.get_window_extent(renderer) for t in outer]
    for text, box in zip(outer, boxes, strict=True):
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text
        assert not box.overlaps(ax.bbox), text  # outside the matrix
    assert not any(a.overlaps(b) for n, a in enumerate(boxes) for b in boxes[n + 1 :])


def test_confusion_rates_of_ten_classes_fit_their_cells_and_never_overlap() -> None:
    """A digits-like normalized matrix (the one that printed `0.030.03` in row 5): every number inside its
    own cell, two decimals, zeros blank, tick labels upright and no larger than the numbers' text."""
    gen = torch.Generator().manual_seed(0)
    counts = torch.eye(10) * 30 + (torch.rand(10, 10, generator=gen) < 0.3) * torch.randint(1, 3, (10, 10))
    rates = counts / counts.sum(dim=1, keepdim=True)
    fig = plot_confusion(rates, [str(i) for i in range(10)], "normalized")
    texts = rendered_texts(fig)
    assert len(texts) == int((rates > 0).sum()) and all(
        re.fullmatch(r"[01]\.\d\d", t.get_text()) for t, _ in texts
    )
    ax = fig.axes[0]
    for text, box in texts:
        j, i = text.get_position()  # the cell's centre, in data units
        cell = ax.transData.transform([(j - 0.5, i - 0.5), (j + 0.5, i + 0.5)])
        low, high = cell.min(axis=0), cell.max(axis=0)
        assert low[0] <= box.x0 and box.x1 <= high[0] and low[1] <= box.y0 and box.y1 <= high[1], text
    boxes = [box for _, box in texts]
    assert not any(a.overlaps(b) for n, a in enumerate(boxes) for b in boxes[n + 1 :])
    assert len(fig.axes) == 1  # every cell that is not blank says its number: no colour bar
    names = [t for t in fig.texts if t.get_gid() in ("predicted", "true")]
    assert all(name.get_rotation() == 0 for name in names)
    labels = [t for t in fig.texts if t.get_gid() == "label"]
    assert max(float(t.get_fontsize()) for t in labels) <= min(float(t.get_fontsize()) for t in names)
    assert_laid_out(fig)
    assert_laid_out(
        plot_confusion(counts.long() * 40, CIFAR10DataModule.class_names, "counts")
    )  # names turned


def test_a_confusion_matrix_of_a_hundred_classes_is_drawn_without_cell_numbers() -> None:
    names = [f"class_{i}" for i in range(100)]
    counts = torch.eye(100, dtype=torch.long) * 9 + 1
    fig = plot_confusion(counts, names, "counts")
    texts = rendered_texts(fig)
    assert texts == []  # 10 000 numbers would be unreadable: the colours tell it
    assert tagged(fig, "true") == names and tagged(fig, "predicted") == names
    assert len(fig.axes) == 2  # the colour bar tells the numbers
    assert fig.get_size_inches()[0] < 16  # a picture one can open, not a poster
    assert_laid_out(fig)
    assert_laid_out(plot_confusion(counts, [f"aquarium_fish_{i}" for i in range(100)], "counts"))


# ---- life cycle with a real Trainer ------------------------------------------------------------------


class Recorder(EpochCallback):
    """Records what the base class hands a subclass: one emit per real epoch (with the samples seen
    since reset), and each draw with the epoch it shows and the W&B key it would log under."""

    def __init__(self, every_n_epochs: int = 0) -> None:
        super().__init__(stages=("val", "test"), every_n_epochs=every_n_epochs)
        self.events: list[tuple[str, int, int]] = []
        self.drawn: list[tuple[str, int]] = []
        self.seen = 0

    def reset(self, pl_module: pl.LightningModule) -> None:
        self.seen = 0

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        self.seen += len(example)

    def emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog) -> int:
        self.events.append((out.stage, trainer.current_epoch, self.seen))
        return trainer.current_epoch

    def draw(self, drawing: int, out: VisualLog) -> None:
        self.drawn.append((out.key("x"), drawing))


def small_trainer(root: Path, callbacks: list[pl.Callback], epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = dict(
        default_root_dir=root, accelerator="cpu", max_epochs=epochs, limit_train_batches=3,
        num_sanity_val_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    return pl.Trainer(**(options | kwargs))


@pytest.mark.slow  # trains for more than one epoch
def test_nothing_during_sanity_check_and_a_fresh_start_every_epoch(tmp_path: Path) -> None:
    pl.seed_everything(0)
    recorder, topk = Recorder(), TopKExamples(k=5, every_n_epochs=1)
    dm = DigitsDataModule(batch_size=32)
    trainer = small_trainer(tmp_path, [recorder, topk])
    model = ConvNet(10, (1, 8, 8))
    trainer.fit(model, datamodule=dm)
    num_val = len(dm.datasets["val"])
    # The sanity check (2 batches) emitted nothing, and each epoch saw exactly the validation set once.
    assert recorder.events == [("val", 0, num_val), ("val", 1, num_val)]
    trainer.test(model, datamodule=dm, verbose=False)
    assert recorder.events[-1] == ("test", 2, len(dm.datasets["test"]))

    tables = [json.loads((tmp_path / f"plots/val/epoch_{e}/top_k_table.json").read_text()) for e in (0, 1)]
    top = [[(row["index"], row["loss"]) for row in table if row["set"] == "top_k"] for table in tables]
    assert all(len({index for index, _ in epoch}) == 5 for epoch in top)
    assert top[0] != top[1]  # each epoch ranked its own losses: the weights changed in between


class FixedScoreModel(ConvNet):
    """Logs a made-up `val/score` per epoch, so that which epoch is best is known in advance."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__(10, (1, 8, 8))
        self.scores = scores

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self.log("val/score", self.scores[self.current_epoch])


def fit_scored(root: Path, scores: list[float], recorder: Recorder, *more: pl.Callback) -> None:
    best = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/score", mode="max")
    trainer = small_trainer(
        root, [recorder, best, *more], epochs=len(scores), limit_val_batches=2, enable_checkpointing=True
    )
    trainer.fit(FixedScoreModel(scores), datamodule=DigitsDataModule(batch_size=32))


@pytest.mark.slow  # trains for more than one epoch
def test_a_fit_draws_its_last_epoch_at_once_and_its_best_at_the_end(tmp_path: Path) -> None:
    recorder = Recorder()
    fit_scored(tmp_path, [0.5, 0.9, 0.7, 0.6], recorder)
    assert [epoch for _, epoch, _ in recorder.events] == [0, 1, 2, 3]  # scalars: every epoch
    # Epoch 3, the last, when its validation ends; epoch 1, the best, once the fit is over.
    assert recorder.drawn == [("val/x", 3), ("val/best/x", 1)]


@pytest.mark.slow  # trains for more than one epoch
def test_every_n_epochs_draws_every_nth_epoch_too_and_the_best_once(tmp_path: Path) -> None:
    recorder = Recorder(every_n_epochs=2)
    fit_scored(tmp_path, [0.5, 0.9, 0.7, 0.6, 0.8], recorder)
    assert recorder.drawn == [("val/x", 1), ("val/x", 3), ("val/x", 4)]  # the best (1) was drawn already


@pytest.mark.slow  # trains for more than one epoch
def test_an_early_stop_draws_the_epoch_it_stopped_at(tmp_path: Path) -> None:
    recorder = Recorder()
    stop = EarlyStopping(monitor="val/score", mode="max", patience=1)
    fit_scored(tmp_path, [0.9, 0.5, 0.4, 0.3, 0.2, 0.1], recorder, stop)
    assert recorder.drawn == [("val/x", 1), ("val/best/x", 0)]


class KillAfterLastEpoch(pl.Callback):
    """SIGKILLs its own process once the last epoch's validation is over, before the fit can end."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == trainer.max_epochs:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow  # a CLI subprocess
def test_a_fit_killed_after_its_last_epoch_still_has_that_epochs_pngs(runs_dir: Path) -> None:
    killed = subprocess.run(
        [sys.executable, "-m", "project", "fit", "--config", DIGITS, "--config", LIMIT, "--run_name", "k",
         "--trainer.callbacks+=tests.test_callbacks.KillAfterLastEpoch", "--trainer.default_root_dir",
         str(runs_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=own_wandb_service(),
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = runs_dir / "k"
    assert not (run_dir / "metrics.json").exists()  # the fit never reached its end
    for name in FIGURES:
        with Image.open(run_dir / "plots" / "val" / "epoch_1" / f"{name}.png") as image:
            assert image.size[0] > 50


def test_callbacks_refuse_models_that_do_not_return_predictions(tmp_path: Path) -> None:
    class PlainModel(ConvNet):
        def validation_step(self, batch: Example, batch_idx: int) -> Any:
            return self(batch).logits  # a tensor, not a Prediction

    trainer = small_trainer(tmp_path, [TopKExamples()], epochs=1)
    with pytest.raises(TypeError, match="return a Prediction"):
        trainer.fit(PlainModel(10, (1, 8, 8)), datamodule=DigitsDataModule())


# ---- the real outputs: PNGs, W&B read back, TensorBoard ----------------------------------------------


@pytest.mark.slow
def test_fit_logs_every_visual_to_wandb_and_png(runs_dir: Path) -> None:
    cli = main(cli_args("fit", "--config", DIGITS, "--config", LIMIT, runs_dir=runs_dir))
    assert cli is not None
    run_dir = cli.run_dir
    # Fit's validation plots are filed by epoch: the last epoch's and the best's (the same here, or
    # two folders); the test's under the checkpoint it tested (the best). No other epoch is drawn.
    tested = next((run_dir / "checkpoints").glob("best-*.ckpt")).stem
    drawn = sorted({"epoch_1", f"epoch_{int(tested.removeprefix('best-epoch'))}"})
    assert sorted(p.name for p in (run_dir / "plots" / "val").iterdir()) == drawn
    for stage, folders in (("val", drawn), ("test", [tested])):
        for name_ in folders:
            folder = run_dir / "plots" / stage / name_
            for name in FIGURES:
                with Image.open(folder / f"{name}.png") as image:
                    assert image.size[0] > 50 and image.size[1] > 50
    summary = read_wandb_summary(run_dir)["summary"]
    assert isinstance(summary, dict)
    for stage in ("val", "test"):
        for name in FIGURES:
            assert summary[f"{stage}/{name}"]["_type"] == "images/separated", name
        for name in ("top_k", "bottom_k"):
            captions = summary[f"{stage}/{name}"]["captions"]
            assert len(captions) == 8 and all(CAPTION.match(c) for c in captions), captions
        assert summary[f"{stage}/top_k_table"]["_type"] == "table-file"
        assert 0.0 <= summary[f"{stage}/ece"] <= 1.0
    # The highest-loss captions are sorted by loss, highest first.
    losses = [float(c.rsplit(" ", 1)[1]) for c in summary["val/top_k"]["captions"]]
    assert losses == sorted(losses, reverse=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/ece"] == pytest.approx(summary["val/ece"])


@pytest.mark.slow
def test_without_wandb_pngs_are_written_and_tensorboard_gets_the_figures(
    tmp_path: Path, runs_dir: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = tmp_path / "tensorboard_only.yaml"
    loggers.write_text(
        "trainer:\n  logger:\n    - class_path: pytorch_lightning.loggers.TensorBoardLogger\n"
        "      init_args: {save_dir: ., name: tb}\n"
    )
    cli = main(
        cli_args("fit", "--config", DIGITS, "--config", LIMIT, "--config", str(loggers), runs_dir=runs_dir)
    )
    assert cli is not None
    assert not (cli.run_dir / "wandb").exists()
    assert all((cli.run_dir / "plots/val/epoch_1" / f"{name}.png").is_file() for name in FIGURES)
    images: dict[str, int] = {}  # tag -> number of images, over every event file of the run
    for events in (cli.run_dir / "tb").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            images[tag] = images.get(tag, 0) + len(accumulator.Images(tag))
    assert {f"{stage}/{name}" for stage in ("val", "test") for name in FIGURES} <= set(images)
    # Of the 2 validation epochs only the last is drawn under val/ (the best, if earlier, under val/best/).
    assert images["val/confusion_matrix"] == 1
