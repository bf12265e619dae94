"""Our Trainer path against a hand-written PyTorch loop: same model, data, batch size and steps.

    venv/bin/python benchmarks/framework_overhead.py [--steps 40] [--repeats 5]

Three arms train the demo ConvNet on in-memory CIFAR-shaped tensors (batch 128) for the same
number of optimizer steps: (raw) a plain loop: forward, loss, backward, step, zero_grad;
(bare) our BaseModel under a Trainer with logger, progress bar, checkpointing and summary off;
(defaults) the same with the callbacks and loggers of configs/defaults.yaml (W&B offline, CSV,
checkpoints, LR monitor, progress bar, RNG state, NaN guard). A step's time runs from the end of the
step before to its own end (data loading included); the first 5 steps are warm-up. The figure is the
median step time over all steps of all repeats, arms alternating: robust to the bursts of a shared
machine, and it leaves out the once-per-epoch work (loader restart, the defaults' checkpoint save).
Targets: bare <= 1.03 x raw, defaults <= 1.08 x raw.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from _common import median, quiet, report
from torch.nn import functional as F
from torch.utils.data import DataLoader

from project.model import ConvNet
from project.structs import Example

WARMUP = 5


def data(n: int) -> list[Example]:
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    return [Example(images[i], labels[i], torch.tensor(i)) for i in range(n)]


def model() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(10, (3, 32, 32), optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=5e-4))


def raw(steps: int, samples: list[Example]) -> list[float]:
    net = model()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=5e-4)
    # A list is a map-style dataset at runtime; torch's stubs want a Dataset subclass.
    loader: DataLoader[Example] = DataLoader(
        samples,  # type: ignore[arg-type]
        batch_size=128,
        shuffle=True,
        collate_fn=Example.collate,
    )
    ends: list[float] = []
    while len(ends) < steps:
        for batch in loader:
            loss = F.cross_entropy(net.classifier(net.features(batch.image)), batch.require_label())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ends.append(time.perf_counter())
            if len(ends) == steps:
                break
    return step_times(ends)


def step_times(ends: list[float]) -> list[float]:
    """Durations of the steps after the warm-up, from the ends of consecutive steps."""
    return [b - a for a, b in zip(ends[WARMUP - 1 :], ends[WARMUP:], strict=False)]


class StepEnds(pl.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def with_trainer(steps: int, samples: list[Example], defaults: bool, root: Path) -> list[float]:
    timer = StepEnds()
    callbacks: list[pl.Callback] = [timer]
    kwargs: dict[str, Any] = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False}
    if defaults:
        from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
        from pytorch_lightning.loggers import CSVLogger, WandbLogger

        from project.callbacks import NonFiniteLossGuard, RNGState
        from project.checkpoint_io import AtomicCheckpointIO

        callbacks += [
            ModelCheckpoint(dirpath=root / "checkpoints", save_last=True),
            LearningRateMonitor(),
            RichProgressBar(),
            RNGState(),
            NonFiniteLossGuard(),
        ]
        kwargs = {
            "logger": [WandbLogger(save_dir=str(root)), CSVLogger(root, name="csv")],
            "plugins": [AtomicCheckpointIO()],
            "log_every_n_steps": 10,
        }
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )
    # A list is a map-style dataset at runtime; torch's stubs want a Dataset subclass.
    loader: DataLoader[Example] = DataLoader(
        samples,  # type: ignore[arg-type]
        batch_size=128,
        shuffle=True,
        collate_fn=Example.collate,
    )
    trainer.fit(model(), train_dataloaders=loader)
    if defaults:
        import wandb

        wandb.finish()
    return step_times(timer.ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    quiet()
    samples = data(128 * 16)
    times: dict[str, list[float]] = {"raw": [], "bare": [], "defaults": []}
    with tempfile.TemporaryDirectory() as tmp:
        raw(WARMUP + 2, samples)  # first-call costs off the clock
        for repeat in range(args.repeats):
            times["raw"] += raw(args.steps, samples)
            times["bare"] += with_trainer(args.steps, samples, False, Path(tmp) / f"bare{repeat}")
            times["defaults"] += with_trainer(args.steps, samples, True, Path(tmp) / f"defaults{repeat}")
    base = median(times["raw"])
    rows = [
        {
            "arm": arm,
            "median step (s)": median(values),
            "ratio vs raw": median(values) / base,
            "target": target,
        }
        for arm, values, target in (
            ("raw", times["raw"], "-"),
            ("bare", times["bare"], "<= 1.03"),
            ("defaults", times["defaults"], "<= 1.08"),
        )
    ]
    report(
        "framework_overhead",
        rows,
        ["arm", "median step (s)", "ratio vs raw", "target"],
        note=f"ConvNet on CIFAR-shaped tensors, batch 128, {args.steps} steps, {args.repeats} repeats",
    )


if __name__ == "__main__":
    main()
