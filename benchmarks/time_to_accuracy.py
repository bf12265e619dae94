"""Wall time to 99 % validation accuracy on digits: our Trainer path against a hand-written loop.

    venv/bin/python benchmarks/time_to_accuracy.py [--repeats 3]

Both train the digits demo model (ConvNet, AdamW, one-cycle over 30 epochs, batch 64) on the same
DigitsDataModule split from the same seed, validate after every epoch and stop at the first
validation accuracy >= 0.99. Timed from the first training step to that validation's end; the
median over repeats, arms alternating. The ratios are paired: each repeat's run against the baseline's
run of the same repeat (seconds apart), then the median of those ratios with their min-max, so a
machine that slows down between repeats moves both runs of a pair, not their ratio. Target (issue
13): ours <= 1.10 x the Lightning floor below.

A third arm, "Lightning floor", is the least any LightningModule can do: the same net, loss,
optimizer and schedule, a training_step that only returns the loss, one logged value per epoch.
Its ratio is Lightning's own loop overhead at this step size, which no template on the Trainer
can go below.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from _common import median, paired, quiet, report, spread
from torch import Tensor
from torch.nn import functional as F

from project.data import DigitsDataModule
from project.model import ConvNet
from project.structs import Example

TARGET, MAX_EPOCHS = 0.99, 30
LR, WEIGHT_DECAY = 0.005, 1e-4  # configs/digits.yaml's AdamW and one-cycle peak


def model() -> ConvNet:
    pl.seed_everything(0, verbose=False)
    return ConvNet(
        10, (1, 8, 8), channels=(32, 64), hidden=(128,),
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY),
        scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=LR),
    )  # fmt: skip


def data() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    return dm


def raw() -> tuple[float, int]:
    net, dm = model(), data()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=MAX_EPOCHS * len(train))
    start = time.perf_counter()
    for epoch in range(MAX_EPOCHS):
        net.train()
        for batch in train:
            loss = F.cross_entropy(net(batch).logits, batch.require_label())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
        net.eval()
        with torch.no_grad():
            correct = sum(int((net(b).pred == b.require_label()).sum()) for b in val)
        if correct / len(dm.datasets["val"]) >= TARGET:
            return time.perf_counter() - start, epoch + 1
    return float("nan"), MAX_EPOCHS


class Floor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = model()
        self.correct = self.seen = 0

    def training_step(self, batch: Example, batch_idx: int) -> Tensor:
        return F.cross_entropy(self.net(batch).logits, batch.require_label())

    def validation_step(self, batch: Example, batch_idx: int) -> None:
        self.correct += int((self.net(batch).pred == batch.require_label()).sum())
        self.seen += len(batch)

    def on_validation_epoch_end(self) -> None:
        self.log("val/acc", self.correct / self.seen)
        self.correct = self.seen = 0

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class StopAtTarget(pl.Callback):
    def __init__(self) -> None:
        self.start, self.elapsed, self.epochs = 0.0, float("nan"), MAX_EPOCHS

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if float(trainer.callback_metrics.get("val/acc", 0.0)) >= TARGET and not trainer.sanity_checking:
            self.elapsed, self.epochs = time.perf_counter() - self.start, trainer.current_epoch + 1
            trainer.should_stop = True


def ours(module: pl.LightningModule | None = None) -> tuple[float, int]:
    stop = StopAtTarget()
    kwargs: dict[str, Any] = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False}
    with tempfile.TemporaryDirectory() as root:  # the DataModule saves its split.json there
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=MAX_EPOCHS,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            callbacks=[stop],
            default_root_dir=root,
            **kwargs,
        )
        trainer.fit(module or model(), datamodule=data())
    return stop.elapsed, stop.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    arms = {"raw loop": raw, "Lightning floor": lambda: ours(Floor()), "ours (Trainer)": ours}
    results: dict[str, list[tuple[float, int]]] = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for arm, run in arms.items():
            results[arm].append(run())
    seconds = {arm: [t for t, _ in runs] for arm, runs in results.items()}
    rows = [
        {
            "arm": arm,
            "median time (s)": median(seconds[arm]),
            "epochs to 99%": "/".join(str(e) for _, e in runs),
            "min-max (s)": spread(seconds[arm], 2),
            "vs raw": paired(seconds[arm], seconds["raw loop"]),
            "vs floor": paired(seconds[arm], seconds["Lightning floor"]),
        }
        for arm, runs in results.items()
    ]
    report(
        "time_to_accuracy",
        rows,
        ["arm", "median time (s)", "min-max (s)", "epochs to 99%", "vs raw", "vs floor"],
        note="digits, ConvNet, AdamW one-cycle, batch 64; ratios: median of the per-repeat ratios (min-max);"
        " target: ours <= 1.10 x the floor, a minimal LightningModule: the Trainer's own overhead at this"
        " step size.",
    )


if __name__ == "__main__":
    main()
