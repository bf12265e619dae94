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
every epoch and on the default schedule. Last, the validation loop alone on 5 000 CIFAR-shaped images
(CIFAR-10's val split size; 2 training batches per epoch): the epochs the default schedule only collects,
and the one it draws. `--only TEXT` runs the scenarios whose name contains TEXT.
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


class Timer(pl.Callback):
    """Times each training epoch (validation included) and each validation loop alone. Listed last, so
    its on_validation_end runs after the visual callbacks' (where the schedule draws)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.validations: list[float] = []
        self._epoch_start = self._validation_start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self._epoch_start)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validations.append(time.perf_counter() - self._validation_start)


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


def cifar_validation(root: Path) -> Callable[[], pl.LightningDataModule]:
    """5 000 CIFAR-shaped validation images (CIFAR-10's own val split size at val_fraction 0.1)."""
    files = write_cifar10(root, per_batch=2000, test_size=10)
    return lambda: CIFAR10DataModule(
        data_dir=str(files.root), batch_md5=files.batch_md5, download=False, batch_size=128, num_workers=0,
        val_fraction=0.5,
    )  # fmt: skip


def run(
    make_data: Callable[[], pl.LightningDataModule],
    visuals: bool,
    every_n_epochs: int,
    epochs: int,
    root: Path,
    validation: bool = False,
) -> list[float]:
    """Seconds of each epoch but the first (train + validation); with `validation`, of each validation
    loop alone, the first included (a fit of 2 training batches per epoch)."""
    from pytorch_lightning.loggers import WandbLogger

    pl.seed_everything(0, verbose=False)
    timer = Timer()
    callbacks: list[pl.Callback] = []
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
        callbacks=[*callbacks, timer],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=2 if validation else 1.0,
    )
    model = ConvNet(
        10, data.image_shape,  # type: ignore[attr-defined]
        optimizer=partial(torch.optim.AdamW, lr=0.005, weight_decay=5e-4),
        scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.005),
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    import wandb

    wandb.finish()
    return timer.validations if validation else timer.epochs[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="", help="run only the scenarios whose name contains this")
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
            if args.only not in name:
                continue
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
        if args.only in VALIDATION:
            rows += validation_rows(cifar_validation(Path(tmp) / "cifar_val"), args.repeats, Path(tmp))
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
        "targets (issue 13): the visuals' share of a CIFAR-shaped 5k-image validation epoch <= 3 %"
        " (ratio <= 1.03);\nratio <= 1.05 (digits, before the schedule). Medians over epochs when every epoch"
        " is drawn, else means\n(the default schedule draws the last). The drawing cost is fixed per drawn"
        " epoch, so the ratio for epochs\nof T seconds is 1 + cost / T."
    )
    columns = ["scenario", "epoch, none (s)", "epoch, all (s)", "ratio", "cost per epoch (s)"]
    report("callback_overhead", table, columns, note=note)


VALIDATION = "CIFAR-shaped 5k-image validation epochs"


def validation_rows(
    make_data: Callable[[], pl.LightningDataModule], repeats: int, tmp: Path, epochs: int = 4
) -> list[Row]:
    """The validation loop alone, 5 000 images: the epochs the default schedule does not draw (only
    collected) and the one it draws (the last), with and without the visual callbacks."""
    collected: dict[str, list[float]] = {"none": [], "all": []}
    drawn: dict[str, list[float]] = {"none": [], "all": []}
    for repeat in range(repeats):
        for arm in ("none", "all"):
            times = run(make_data, arm == "all", 0, epochs, tmp / f"val-{arm}-{repeat}", validation=True)
            collected[arm] += times[1:-1]  # the first one warms up
            drawn[arm].append(times[-1])
    rows: list[Row] = []
    for name, by_arm in ((f"{VALIDATION}, not drawn", collected), (f"{VALIDATION}, drawn (the last)", drawn)):
        stat = {arm: statistics.median(values) for arm, values in by_arm.items()}
        rows.append(
            {"scenario": name, "epoch_s": stat, "ratio": stat["all"] / stat["none"], "times_s": by_arm}
        )
    return rows


if __name__ == "__main__":
    main()
