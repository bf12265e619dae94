"""`Throughput` (project/callbacks/throughput.py): per-epoch samples/s, batches/s, FLOP/s and MFU."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.throughput import measure_flops
from pytorch_lightning.loggers import CSVLogger

from project.callbacks import Throughput
from project.callbacks import throughput as throughput_module
from project.data import DigitsDataModule
from project.model import MLPNet
from project.structs import Example

SLEEP_S = 0.25  # per validation batch: validation that must not count as training time


class SlowValidation(pl.Callback):
    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(SLEEP_S)


def test_flops_counted_on_meta_match_a_real_pass() -> None:
    """The meta-device count equals Lightning's measure_flops on real tensors: forward + backward for a
    training batch, forward alone (2 x 64 x 10 per sample for one 64 -> 10 layer) for validation."""
    model = MLPNet(num_classes=10, in_shape=(1, 8, 8), hidden=())
    batch = Example(image=torch.randn(16, 1, 8, 8), label=torch.zeros(16, dtype=torch.long))
    callback = Throughput()
    real = measure_flops(model, lambda: model(batch).logits, loss_fn=torch.Tensor.sum)
    assert callback._measure(model, batch, "train") == real / 16 > 0
    model.eval()
    assert callback._measure(model, batch, "val") == 2 * 64 * 10
    assert all(p.device.type == "cpu" for p in model.parameters())  # the model itself is untouched


def bare_trainer(tmp_path: Path, callbacks: list[pl.Callback], **limits: Any) -> pl.Trainer:
    """A CPU Trainer logging to metrics.csv under `tmp_path`, with nothing but `callbacks`."""
    return pl.Trainer(
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        default_root_dir=tmp_path,  # where the DataModule saves split.json
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **limits,
    )


def read_epochs(log_dir: Path) -> list[dict[str, float]]:
    (path,) = log_dir.rglob("metrics.csv")
    rows = [
        {k: float(v) for k, v in row.items() if v and k.startswith("perf/")}
        for row in csv.DictReader(path.open())
    ]
    return [row for row in rows if row]


@pytest.mark.slow
def test_rates_per_epoch_exclude_validation_and_give_mfu_against_the_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CPU has no published peak: stand one in, to check MFU = FLOP/s / peak (Lightning's formula).
    peak = 1e12
    monkeypatch.setattr(throughput_module, "get_available_flops", lambda device, dtype: peak)
    data = DigitsDataModule(batch_size=32, device_loader=True)
    model = MLPNet(num_classes=10, in_shape=(1, 8, 8), hidden=(32,))
    trainer = bare_trainer(
        tmp_path, [Throughput(), SlowValidation()], max_epochs=2, limit_train_batches=6, limit_val_batches=2,
        log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    rows = read_epochs(tmp_path)
    train = [r for r in rows if "perf/train_samples_per_sec" in r]
    val = [r for r in rows if "perf/val_samples_per_sec" in r]
    assert len(train) == len(val) == 2  # once per epoch each
    example = next(iter(data.train_dataloader()))
    per_sample = {
        "train": Throughput()._measure(model.train(), example, "train"),
        "val": Throughput()._measure(model.eval(), example, "val"),
    }
    for stage, epochs in (("train", train), ("val", val)):
        for row in epochs:
            samples, batches = row[f"perf/{stage}_samples_per_sec"], row[f"perf/{stage}_batches_per_sec"]
            assert samples / batches == pytest.approx(32, rel=1e-4)  # every batch full: 6 x 32, 2 x 32
            flops = row[f"perf/{stage}_flops_per_sec"]
            assert flops / samples == pytest.approx(per_sample[stage], rel=1e-4)
            assert row[f"perf/{stage}_mfu"] == pytest.approx(flops / peak, rel=1e-4)
    # Each validation batch sleeps: validation's rate shows it, training's does not.
    assert all(r["perf/val_batches_per_sec"] < 1 / SLEEP_S for r in val)
    assert all(r["perf/train_batches_per_sec"] > 3 / SLEEP_S for r in train)


def test_no_mfu_without_a_known_peak(tmp_path: Path) -> None:
    """On this CPU Lightning knows no peak: rates are logged, MFU is not."""
    data = DigitsDataModule(batch_size=64, device_loader=True)
    trainer = bare_trainer(
        tmp_path, [Throughput(flops=False)], max_epochs=1, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(MLPNet(num_classes=10, in_shape=(1, 8, 8)), datamodule=data)
    (row,) = [r for r in read_epochs(tmp_path) if "perf/train_samples_per_sec" in r]
    assert row["perf/train_samples_per_sec"] > 0
    assert not any("mfu" in key or "flops" in key for r in read_epochs(tmp_path) for key in r)
