"""`lr_find` and `scale_batch_size`: Lightning's Tuner on a fit's config, in a run directory of their own.

    python -m project lr_find --config configs/digits.yaml
    python -m project scale_batch_size --config configs/digits.yaml --trainer.accelerator gpu

Each takes everything `fit` takes (configs, dotted overrides), builds the model, data and Trainer as
`fit` would, runs the finder instead of training and writes its result to runs/<...>-lr_find-<time>/
(or -scale_batch_size-): a JSON and, for the learning rate, the loss-vs-lr plot. It prints the override
to use; no config file is written to. The finder's own trial steps are thrown away: Lightning restores
the weights and optimizer after it, and nothing trained is kept.
"""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from collections.abc import Sized
from typing import Any

import torch
from matplotlib.figure import Figure
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LightningArgumentParser
from pytorch_lightning.tuner import Tuner

from project.cli import CONFIG_DIR, ProjectCLI, main
from project.data import ClassificationDataModule
from project.data.device_loader import DeviceBatches
from project.errors import UserError
from project.files import atomic_write
from project.model.base import BaseModel, built_class
from project.parser import ProjectArgumentParser
from project.run_dir import start_run, warn_about_callbacks

LR_KEY = "model.init_args.optimizer.init_args.lr"
MAX_LR_KEY = "model.init_args.scheduler.init_args.max_lr"  # OneCycleLR's peak: the lr it actually trains at
BATCH_KEY = "data.init_args.batch_size"


def lr_find(args: list[str]) -> ProjectCLI | None:
    return run_finder(args, LRFinderCLI)


def scale_batch_size(args: list[str]) -> ProjectCLI | None:
    return run_finder(args, BatchSizeFinderCLI)


def run_finder(args: list[str], cli_class: type[FinderCLI]) -> ProjectCLI | None:
    with warnings.catch_warnings():
        # These args are the finder's command line (sys.argv: `lr_find ...`), parsed as `fit`'s. Lightning
        # warns whenever it is given args while sys.argv holds any: a guard for another mistake.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return main(["fit", *args], cli_class=cli_class)


class FinderCLI(ProjectCLI):
    """`fit`'s parsing and building, then a Tuner method in place of `trainer.fit` (LightningCLI calls
    the CLI's own method of a subcommand's name when there is one)."""

    command: str  # the run directory's name part and the result file's stem
    description: str  # what --help says the command does

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        # Parsed as `fit` (run_finder), but --help and error messages name the command the user typed.
        shown = f"python -m project {self.command}"
        parser.usage = str(parser.usage).replace("%(prog)s", shown)  # add_core_arguments' usage line
        parser.description = self.description
        if isinstance(parser, ProjectArgumentParser):
            parser.command = shown

    def before_instantiate_classes(self) -> None:
        config = self.config.fit
        if config.get("ckpt_path") is not None or config.resume == "auto":
            raise UserError(
                f"{self.command} starts from the config's initial weights: drop --ckpt_path / --resume"
            )
        warn_about_callbacks(config, "fit", CONFIG_DIR / "defaults.yaml")
        self.run_dir, self.resuming = start_run(config, self.command)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # No loggers: the finder's trial steps are thrown away, and the result is its JSON and plot.
        self.trainer.logger = None
        # Refused here, before fit writes anything into the run directory (then removed, being empty).
        if self.trainer.world_size > 1:
            raise UserError(
                f"{self.command} runs on one device: add --trainer.devices 1 --trainer.num_nodes 1"
            )
        self.check(self.model)

    def check(self, model: LightningModule) -> None:
        """Refuse what the finder cannot work with, before anything is written."""

    def fit(self, model: LightningModule, datamodule: ClassificationDataModule, **_: Any) -> None:
        result = self.find(Tuner(self.trainer), model, datamodule)
        result["command"] = sys.orig_argv
        with atomic_write(self.run_dir / f"{self.command}.json") as f:
            json.dump(result, f, indent=2)
        print(f"{self.command}: {result['summary']}\n  use: {result['override']}")

    def find(
        self, tuner: Tuner, model: LightningModule, datamodule: ClassificationDataModule
    ) -> dict[str, Any]:
        raise NotImplementedError

    def tests_after_fit(self) -> bool:  # ProjectCLI tests the best checkpoint; a finder trained none
        return False


class LRFinderCLI(FinderCLI):
    command = "lr_find"
    description = (
        "Sweeps the learning rate over a few training steps (Lightning's Tuner.lr_find) on the model, data "
        "and Trainer `fit` would build, and prints the override to train with."
    )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        group = parser.add_argument_group("lr_find (Lightning's Tuner.lr_find)")
        group.add_argument("--min_lr", type=float, default=1e-8, help="smallest learning rate tried")
        group.add_argument("--max_lr", type=float, default=1.0, help="largest learning rate tried")
        group.add_argument("--num_training", type=int, default=100, help="training steps, one lr each")

    def check(self, model: LightningModule) -> None:
        optimizer = built_class(model.make_optimizer) if isinstance(model, BaseModel) else None
        if optimizer is None or "lr" not in inspect.signature(optimizer).parameters:
            name = optimizer.__name__ if optimizer else type(model).__name__
            raise UserError(
                f"lr_find needs an optimizer with an lr argument, and {name} has none: set "
                "model.init_args.optimizer to a torch.optim class that takes lr (AdamW, SGD, ...)"
            )

    def find(
        self, tuner: Tuner, model: LightningModule, datamodule: ClassificationDataModule
    ) -> dict[str, Any]:
        config = self.config_init.fit
        found = tuner.lr_find(
            model,
            datamodule=datamodule,
            min_lr=config.min_lr,
            max_lr=config.max_lr,
            num_training=config.num_training,
            update_attr=False,  # our lr lives in the optimizer's config, not on the model
        )
        index = steepest_fall(found.results["loss"]) if found is not None else None
        if found is None or index is None:
            raise UserError(
                "lr_find could not suggest a learning rate: the loss did not fall over the steps it ran; "
                "raise --num_training or widen --min_lr/--max_lr"
            )
        lr = found.results["lr"][index]
        figure = found.plot(suggest=False, show=False)
        assert isinstance(figure, Figure)  # plot() makes its own figure when given no axes
        figure.axes[0].plot(lr, found.results["loss"][index], "o", color="red", markersize=8)
        figure.savefig(self.run_dir / "lr_find.png", dpi=100)
        override = f"--{LR_KEY} {lr:.3g}"
        scheduler = built_class(model.make_scheduler)
        if scheduler is not None and "max_lr" in inspect.signature(scheduler).parameters:
            override += f" --{MAX_LR_KEY} {lr:.3g}"
        return {
            "suggestion": lr,
            "summary": f"suggested learning rate {lr:.3g} (the loss's steepest fall), plotted in lr_find.png",
            "override": override,
            "min_lr": config.min_lr,
            "max_lr": config.max_lr,
            "num_training": config.num_training,
            "lr": found.results["lr"],
            "loss": found.results["loss"],
        }


def steepest_fall(losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> int | None:
    """Index of the steepest fall of the loss against log(lr): Lightning's suggestion rule, with its
    derivative taken along the axis the exponential sweep samples evenly. Lightning 2.5.3+ takes it
    against lr itself, which weighs the smallest learning rates' noise by 1/lr and suggests them
    (Lightning-AI/pytorch-lightning#21141, open). The first points are skipped as Lightning does: its
    smoothing starts biased low."""
    kept = torch.tensor(losses[skip_begin : len(losses) - skip_end], dtype=torch.float64)
    finite = torch.isfinite(kept).nonzero().flatten()
    if len(finite) < 2:
        return None
    # The sweep's steps are evenly spaced in log(lr), so the step index is that axis.
    slope = torch.gradient(kept[finite], spacing=[finite.double()])[0]
    if slope.min() >= 0:
        return None
    return int(finite[slope.argmin()]) + skip_begin


class BatchSizeFinderCLI(FinderCLI):
    command = "scale_batch_size"
    description = (
        "Doubles the batch size while a few training steps still fit in memory (Lightning's "
        "Tuner.scale_batch_size) on the model, data and Trainer `fit` would build, and prints the override."
    )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        group = parser.add_argument_group("scale_batch_size (Lightning's Tuner.scale_batch_size, power mode)")
        group.add_argument("--steps_per_trial", type=int, default=3, help="training steps per batch size")
        group.add_argument("--max_trials", type=int, default=25, help="doublings at most")

    def find(
        self, tuner: Tuner, model: LightningModule, datamodule: ClassificationDataModule
    ) -> dict[str, Any]:
        config = self.config_init.fit
        start = datamodule.batch_size  # the attribute Lightning's finder doubles
        size = tuner.scale_batch_size(
            model,
            datamodule=datamodule,
            mode="power",
            steps_per_trial=config.steps_per_trial,
            init_val=start,
            max_trials=config.max_trials,
        )
        if size is None:
            raise UserError(f"scale_batch_size found no batch size that fits, from {start} down")
        device = self.trainer.strategy.root_device
        # Lightning stops doubling at an out-of-memory error (a GPU's: a CPU's is the system's, not an
        # exception), after max_trials, at 8192 or at the training split's size (which it cannot see
        # through the device loader: checked here).
        samples = training_samples(datamodule.train_dataloader())
        bound = "device memory" if device.type == "cuda" else "not memory: a CPU has no limit it reports"
        if samples is not None and size >= samples:
            size, bound = samples, f"the training split's {samples} samples"
        elif size >= 8192:
            bound = "Lightning's largest trial, 8192"
        return {
            "batch_size": size,
            "start": start,
            "device": str(device),
            "summary": f"largest batch size that ran on {device}: {size} (from {start}; bounded by {bound})",
            "bounded_by": bound,
            "override": f"--{BATCH_KEY} {size}",
            "steps_per_trial": config.steps_per_trial,
            "max_trials": config.max_trials,
        }


def training_samples(loader: Any) -> int | None:
    """Samples per epoch of a training loader, a DataLoader or the device loader; None when unknown."""
    if isinstance(loader, DeviceBatches):
        return loader.num_samples()
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if isinstance(dataset, Sized) else None
