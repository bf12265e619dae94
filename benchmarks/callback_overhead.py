"""Epoch time with all visual callbacks vs none, measured in the same process.

    venv/bin/python benchmarks/callback_overhead.py [--repeats 2]

Each scenario trains the demo ConvNet twice per repeat with the same Trainer (W&B offline logger on,
progress bar and checkpointing off): once bare, once with TopKExamples, UncertaintyPlots and
ConfusionMatrix. Runs alternate (A B A B ...) so drift on a shared machine hits both arms. An epoch
is timed from `on_train_epoch_start` to `on_train_epoch_end`, which includes validation and the
callbacks' epoch-end drawing and logging; the first epoch of each run (warm-up) is dropped.

Scenarios: digits (0.13 s epochs, where a fixed per-epoch drawing cost shows most) drawn every epoch,
every 5th, and on the default schedule (project/callbacks/base.py: here only the last epoch, as these
runs keep no checkpoint to name a best one); and a CIFAR-10-shaped dataset (5 000 generated 32x32
colour images in the real on-disk format, read by CIFAR10DataModule) whose epochs last seconds, drawn
every epoch and on the default schedule.
Prints medians and ratios; writes benchmarks/results/callback_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypedDict

import pytorch_lightning as pl
import torch
from _common import quiet, report

from project.callbacks import ConfusionMatrix, TopKExamples, UncertaintyPlots
from project.data import CIFAR10DataModule, DigitsDataModule
from project.data.fake_cifar10 import write_cifar10
from project.model import ConvNet


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)


class Row(TypedDict):
    scenario: str
    epoch_s: dict[str, float]  # by arm: "none", "all"
    ratio: float
    times_s: dict[str, list[float]]


def digits() -> pl.LightningDataModule:
    return DigitsDataModule(batch_size=64)


def cifar_shaped(root: Path) -> Callable[[], pl.LightningDataModule]:
    files = write_cifar10(root, per_batch=1000, test_size=10)
    return lambda: CIFAR10DataModule(
        data_dir=str(files.root), batch_md5=files.batch_md5, download=False, batch_size=128, num_workers=0
    )


def run(
    make_data: Callable[[], pl.LightningDataModule],
    visuals: bool,
    every_n_epochs: int,
    epochs: int,
    root: Path,
) -> list[float]:
    from pytorch_lightning.loggers import WandbLogger

    pl.seed_everything(0, verbose=False)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    if visuals:
        callbacks += [
            TopKExamples(k=8, every_n_epochs=every_n_epochs),
            UncertaintyPlots(every_n_epochs=every_n_epochs),
            ConfusionMatrix(every_n_epochs=every_n_epochs),
        ]
    data = make_data()
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=epochs,
        logger=WandbLogger(save_dir=str(root)),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    model = ConvNet(
        10, data.image_shape,  # type: ignore[attr-defined]
        optimizer=partial(torch.optim.AdamW, lr=0.005, weight_decay=5e-4),
        scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.005),
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    import wandb

    wandb.finish()
    return timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    quiet()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        cifar = cifar_shaped(Path(tmp) / "cifar")
        scenarios = [  # every_n_epochs 0: the default schedule (the last epoch; no checkpoint, so no best)
            ("digits, every epoch", digits, 1, 6),
            ("digits, every_n_epochs=5", digits, 5, 11),
            ("digits, default schedule (10 epochs)", digits, 0, 11),
            ("CIFAR-shaped 5k, every epoch", cifar, 1, 3),
            ("CIFAR-shaped 5k, default schedule (3 epochs)", cifar, 0, 4),
        ]
        run(
            digits, True, 1, 2, Path(tmp) / "warmup"
        )  # first-use imports (matplotlib, wandb media) off the clock
        for name, make_data, every, epochs in scenarios:
            times: dict[str, list[float]] = {"none": [], "all": []}
            for repeat in range(args.repeats):
                for arm in ("none", "all"):
                    root = Path(tmp) / f"{len(rows)}-{arm}-{repeat}"
                    times[arm] += run(make_data, arm == "all", every, epochs, root)
            median = {arm: statistics.median(values) for arm, values in times.items()}
            mean = {arm: statistics.mean(values) for arm, values in times.items()}
            # Unless every epoch is drawn the cost lands on some epochs only: compare means, not medians.
            stat = median if every == 1 else mean
            rows.append(
                {"scenario": name, "epoch_s": stat, "ratio": stat["all"] / stat["none"], "times_s": times}
            )
    table = [
        {
            "scenario": row["scenario"],
            "epoch, none (s)": row["epoch_s"]["none"],
            "epoch, all (s)": row["epoch_s"]["all"],
            "ratio": row["ratio"],
            "cost per epoch (s)": row["epoch_s"]["all"] - row["epoch_s"]["none"],
        }
        for row in rows
    ]
    note = (
        "target: ratio <= 1.05 (digits); the visuals' share of a CIFAR-shaped epoch <= 3 % (issue 13).\n"
        "Medians over epochs when every epoch is drawn, else means (the default schedule draws the last).\n"
        "The cost is fixed per watched epoch (drawing and logging), so the ratio for epochs of T seconds is\n"
        "1 + cost / T: <= 1.05 once T >= 20 x cost."
    )
    columns = ["scenario", "epoch, none (s)", "epoch, all (s)", "ratio", "cost per epoch (s)"]
    report("callback_overhead", table, columns, note=note)


if __name__ == "__main__":
    main()
