"""`FinalMetricsFile` on a bare Trainer: what fit, test and validate each write to metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from project.callbacks import FinalMetricsFile
from project.data import DigitsDataModule
from project.model import ConvNet


def small_trainer(root: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    options = dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2) | kwargs
    return pl.Trainer(
        default_root_dir=root, accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, **options,
    )  # fmt: skip


@pytest.mark.slow  # trains for more than one epoch
def test_fit_test_and_validate_each_merge_their_final_metrics(tmp_path: Path) -> None:
    pl.seed_everything(0)
    (tmp_path / "metrics.json").write_text('{"note": "kept"}\n')  # values already there are merged into
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/acc", mode="max")
    trainer = small_trainer(tmp_path, [FinalMetricsFile(), checkpoint], limit_train_batches=3)
    model, data = ConvNet(10, (1, 8, 8)), DigitsDataModule(batch_size=32)
    trainer.fit(model, datamodule=data)
    after_fit = json.loads((tmp_path / "metrics.json").read_text())
    assert after_fit["note"] == "kept"
    assert after_fit["epoch"] == 2 and after_fit["global_step"] == 6
    assert after_fit["val/acc"] == pytest.approx(float(trainer.callback_metrics["val/acc"]))
    assert {"train/loss", "train/acc", "val/loss"} <= set(after_fit)
    assert "train/loss_epoch" not in after_fit and "train/loss_step" not in after_fit  # the epoch value, once
    assert after_fit["best_checkpoint"] == checkpoint.best_model_path
    assert checkpoint.best_model_score is not None
    assert after_fit["best_score"] == pytest.approx(float(checkpoint.best_model_score))

    trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)
    after_test = json.loads((tmp_path / "metrics.json").read_text())
    assert {"test/acc", "test/loss"} <= set(after_test)
    assert {k: v for k, v in after_test.items() if not k.startswith("test/")} == after_fit

    trainer.validate(model, datamodule=data, verbose=False)  # a stage of its own: written too
    assert json.loads((tmp_path / "metrics.json").read_text())["val/acc"] == pytest.approx(
        float(trainer.callback_metrics["val/acc"])
    )
    assert not list(tmp_path.glob(".metrics.json*"))  # no temp file left behind


@pytest.mark.slow  # trains for more than one epoch
def test_validation_inside_fit_writes_nothing_until_fit_ends(tmp_path: Path) -> None:
    written: list[int] = []

    class Watch(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            written.append(int((tmp_path / "metrics.json").exists()))

    trainer = small_trainer(tmp_path, [FinalMetricsFile(), Watch()], enable_checkpointing=False)
    trainer.fit(ConvNet(10, (1, 8, 8)), datamodule=DigitsDataModule(batch_size=32))
    assert written == [0, 0, 0]  # sanity check and two epochs: nothing yet
    assert "best_checkpoint" not in json.loads((tmp_path / "metrics.json").read_text())  # no checkpointing
