"""Our Trainer path against a hand-written PyTorch loop: same model, data, batch size and steps.

    venv/bin/python benchmarks/framework_overhead.py [--steps 40] [--repeats 3]

Three arms train the demo ConvNet on in-memory CIFAR-shaped tensors (batch 128) for the same
number of optimizer steps: (raw) a plain loop: forward, loss, backward, step, zero_grad;
(bare) our BaseModel under a Trainer with logger, progress bar, checkpointing and summary off;
(defaults) the same with the callbacks and loggers of configs/defaults.yaml (W&B offline, CSV,
checkpoints, LR monitor, progress bar, RNG state, NaN guard). Timed from the start of step 5 to the
end of the last one; median per-step time over repeats, arms alternating.
Targets: bare <= 1.03 x raw, defaults <= 1.08 x raw.
"""

from __future__ import annotations

import argparse
import tempfile
import time
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
    return ConvNet(10, (3, 32, 32), lr=1e-3, scheduler="none")


def raw(steps: int, samples: list[Example]) -> float:
    net = model()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=5e-4)
    loader = DataLoader(samples, batch_size=128, shuffle=True, collate_fn=Example.collate)
    start, done = 0.0, 0
    while done < steps:
        for batch in loader:
            if done == WARMUP:
                start = time.perf_counter()
            loss = F.cross_entropy(net.classifier(net.features(batch.image)), batch.require_label())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - start) / (steps - WARMUP)


class StepWindow(pl.Callback):
    def __init__(self, steps: int) -> None:
        self.steps, self.start, self.end = steps, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == WARMUP:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()


def with_trainer(steps: int, samples: list[Example], defaults: bool, root: Path) -> float:
    window = StepWindow(steps)
    callbacks: list[pl.Callback] = [window]
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
    loader = DataLoader(samples, batch_size=128, shuffle=True, collate_fn=Example.collate)
    trainer.fit(model(), train_dataloaders=loader)
    if defaults:
        import wandb

        wandb.finish()
    return (window.end - window.start) / (steps - WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    samples = data(128 * 16)
    times: dict[str, list[float]] = {"raw": [], "bare": [], "defaults": []}
    with tempfile.TemporaryDirectory() as tmp:
        raw(WARMUP + 2, samples)  # first-call costs off the clock
        for repeat in range(args.repeats):
            times["raw"].append(raw(args.steps, samples))
            times["bare"].append(with_trainer(args.steps, samples, False, Path(tmp) / f"bare{repeat}"))
            times["defaults"].append(with_trainer(args.steps, samples, True, Path(tmp) / f"defaults{repeat}"))
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
