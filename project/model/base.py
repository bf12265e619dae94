"""`BaseModel`: the training/evaluation loop written once, in terms of the structs.

A variant subclasses it and overrides what differs, usually only `__init__` (its layers) and
`forward`; the README's "Make it yours" shows one. `compute_loss` gives another objective (a `Loss`
of named, weighted terms: the total is logged, and each term too when there are several) and
`create_metrics` other metrics. Losses and metrics are updated every step and logged once per epoch
(`train/loss`, `val/acc`, ...); the training losses also as `train/loss_step` on the steps the loggers
write (every `trainer.log_every_n_steps`).
`num_classes` and `in_shape` are filled in from the DataModule by the CLI, so model and data cannot
disagree.

The optimizer and LR scheduler are any `torch.optim` classes, chosen in the config with their own
arguments (LightningCLI's `OptimizerCallable`); the length of a schedule is the run's number of
optimizer steps, from the Trainer, never typed by hand::

    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}
    scheduler:
      class_path: torch.optim.lr_scheduler.OneCycleLR
      init_args: {max_lr: 0.1}

Every other constructor argument must be a plain value (number, string, tuple):
`save_hyperparameters` stores them in the checkpoint, which `load_from_checkpoint` reads back with
torch's safe `weights_only` loader and no extra arguments.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, PolynomialLR

from project.checkpoint_io import check_checkpoint_hyperparameters
from project.errors import UserError
from project.metrics import (
    BUILTIN_METRICS,
    ClassificationMetrics,
    ConfiguredMetrics,
    ExampleMetrics,
    LossMeans,
    MetricTermConfig,
)
from project.model.losses import LossTermConfig, LossTerms
from project.model.pretrained import PretrainedConfig, load_pretrained
from project.structs import Example, Loss, Prediction

Stage = Literal["train", "val", "test"]
E = TypeVar("E", bound=Example)
P = TypeVar("P", bound=Prediction)

# The argument that sets the length of a schedule, filled with the run's number of optimizer steps.
SCHEDULE_LENGTH: dict[type | None, str] = {
    OneCycleLR: "total_steps",
    CosineAnnealingLR: "T_max",
    LinearLR: "total_iters",
    PolynomialLR: "total_iters",
}


class ScheduleFactory(Protocol):
    """An LR scheduler class with its arguments from the config. The names after the optimizer are
    left out of the config and `--help`: BaseModel passes the run's length as the one of them that
    the class takes."""

    def __call__(
        self, optimizer: Optimizer, /, *, total_steps: int = ..., T_max: int = ..., total_iters: int = ...
    ) -> LRScheduler: ...


class BaseModel(pl.LightningModule, Generic[E, P]):
    """A classifier: set its optimizer, scheduler, losses and metrics here; subclass it for your model.

    The training, validation, test and prediction loop, written once. Generic over its input `E` and
    output `P` structs (so mypy checks a variant's field use): a variant adds layers and `forward`."""

    # The struct types at run time: config-declared losses and metrics check their field names here.
    example_type: ClassVar[type[Example]] = Example
    prediction_type: ClassVar[type[Prediction]] = Prediction

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, ...],
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: ScheduleFactory | None = None,
        label_smoothing: float = 0.0,
        losses: list[LossTermConfig] | None = None,
        metrics: list[MetricTermConfig] | None = None,
        pretrained: list[PretrainedConfig] | None = None,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: the shape of one input: (channels, height, width) for images, (features,) for
                vectors (linked from the DataModule's input_shape).
            optimizer: any `torch.optim` optimizer with its arguments (lr, weight_decay, ...).
            scheduler: any `torch.optim.lr_scheduler` class with its arguments, stepped every
                optimizer step; None keeps the learning rate constant. OneCycleLR, CosineAnnealingLR,
                LinearLR and PolynomialLR span the whole run: their length (total_steps, T_max,
                total_iters) is the Trainer's number of optimizer steps.
            label_smoothing: cross-entropy label smoothing, 0 to disable.
            losses: loss terms from the config (see model/losses.py); default: `compute_loss`.
            metrics: metrics from the config, logged besides the built-in acc and f1 (see
                metrics/configured.py).
            pretrained: sub-modules to load from earlier runs when fit starts, optionally frozen
                (see model/pretrained.py).
        """
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self._plain_hyperparameters()
        self.num_classes = num_classes
        self.in_shape = tuple(in_shape)
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        self._check_optimization()
        self.label_smoothing = label_smoothing
        self.loss_terms = LossTerms(losses, self.example_type, self.prediction_type) if losses else None
        self.metric_configs = metrics
        self.pretrained = list(pretrained or [])
        self.frozen: list[nn.Module] = []
        # One collection per stage: each accumulates its own epoch. Not a ModuleDict keyed by stage,
        # because "train" would clash with nn.Module.train.
        self.train_metrics = self.create_metrics("train/")
        self.val_metrics = self.create_metrics("val/")
        self.test_metrics = self.create_metrics("test/")
        self.loss_means = {stage: LossMeans() for stage in ("train", "val", "test")}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Self:
        """Lightning's, after refusing a checkpoint whose hyper-parameters name code outside the
        allowed namespaces (checkpoint_io.check_hyperparameters): jsonargparse would import and call
        what they name while rebuilding the model, before any type check."""
        if isinstance(checkpoint_path, (str, os.PathLike)):
            check_checkpoint_hyperparameters(checkpoint_path, f"{cls.__module__}.{cls.__qualname__}")
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ---- what a variant overrides -------------------------------------------------------------

    def forward(self, example: E) -> P:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(example) -> Prediction")

    def compute_loss(self, example: E, prediction: P) -> Loss:
        if self.loss_terms is not None:
            return self.loss_terms(example, prediction)
        ce = F.cross_entropy(prediction.logits, example.require_label(), label_smoothing=self.label_smoothing)
        return Loss({"ce": ce})

    def create_metrics(self, prefix: str) -> ExampleMetrics:
        if self.metric_configs:  # besides the built-in ones: `val/acc` (the default monitor) stays
            return ConfiguredMetrics(
                self.metric_configs,
                self.num_classes,
                self.example_type,
                self.prediction_type,
                prefix=prefix,
                builtin=BUILTIN_METRICS,
            )
        return ClassificationMetrics(self.num_classes, prefix=prefix)

    # ---- pretrained, frozen sub-modules --------------------------------------------------------

    def setup(self, stage: str) -> None:
        # Only when training starts: a resume or a validate/test run restores every weight from its
        # own checkpoint afterwards, and needs no earlier run on disk.
        if stage == "fit":
            for config in self.pretrained:
                module = load_pretrained(self, config)
                if config.get("freeze", True):
                    self.frozen.append(module)

    def train(self, mode: bool = True) -> BaseModel[E, P]:
        super().train(mode)
        for module in self.frozen:  # frozen modules keep eval mode: BatchNorm statistics stay put
            module.eval()
        return self

    # ---- the loop, written once ---------------------------------------------------------------

    def _metrics(self, stage: Stage) -> ExampleMetrics:
        return {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}[stage]

    def _check_input(self, example: E) -> None:
        # Host-side metadata only (no device sync). Without it, a mismatch ends deep in some layer.
        given = tuple(example.image.shape[1:])
        if given != self.in_shape:
            raise UserError(
                f"{type(self).__name__} was built for inputs of shape {self.in_shape} (model.init_args."
                f"in_shape, linked from the DataModule's input_shape), but a batch holds {given}: make "
                f"the DataModule's input_shape (image_shape in older DataModules) the shape of the samples "
                f"it yields"
            )

    def _shared_step(self, example: E, stage: Stage) -> tuple[P, Loss]:
        self._check_input(example)
        prediction: P = self(example)
        loss = self.compute_loss(example, prediction)
        self._metrics(stage).update_from(example, prediction)
        losses = loss.log_dict(stage)
        self.loss_means[stage].update(losses, len(example))
        # Lightning spends ~0.7 ms on every `self.log` call on a CPU, as much as a whole small-model step:
        # a step's loss is logged only when the loggers write it; epoch means come from `loss_means`.
        if stage == "train" and self._step_is_written():
            self.log_dict(
                {f"{name}_step": value for name, value in losses.items()}, on_step=True, on_epoch=False
            )
        return prediction, loss

    def _step_is_written(self) -> bool:
        """Whether the loggers write this training step's values: Lightning writes them after every
        `trainer.log_every_n_steps`-th optimizer step (this step is number global_step + 1), and after
        every step of a fast_dev_run."""
        # Both are set on the Trainer by its connectors at run time, not declared on the class.
        every = int(getattr(self.trainer, "log_every_n_steps", 0))
        fast_dev_run = bool(getattr(self.trainer, "fast_dev_run", False))
        return fast_dev_run or (every > 0 and (self.global_step + 1) % every == 0)

    def _log_metrics(self, stage: Stage) -> None:
        """Log the epoch's losses and metrics and start afresh. torchmetrics' compute() syncs across
        DDP ranks: the epoch's values over every sample."""
        metrics = self._metrics(stage)
        if any(metric.update_count for metric in metrics.values(copy_state=False)):
            self.log_dict(metrics.compute())
        metrics.reset()
        self.log_dict(self.loss_means[stage].compute())
        self.loss_means[stage].reset()

    # A variant that overrides one of these calls super() or logs no metrics for that stage.
    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def training_step(self, batch: E, batch_idx: int) -> Tensor:
        _, loss = self._shared_step(batch, "train")
        return loss.total

    # Returning the Prediction hands it to callbacks' on_validation_batch_end/on_test_batch_end.
    def validation_step(self, batch: E, batch_idx: int) -> P:  # type: ignore[override]
        prediction, _ = self._shared_step(batch, "val")
        return prediction

    def test_step(self, batch: E, batch_idx: int) -> P:  # type: ignore[override]
        prediction, _ = self._shared_step(batch, "test")
        return prediction

    def predict_step(self, batch: E, batch_idx: int, dataloader_idx: int = 0) -> P:
        self._check_input(batch)
        prediction: P = self(batch)
        return prediction

    # ---- optimization -------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer([p for p in self.parameters() if p.requires_grad])
        if self.make_scheduler is None:
            return optimizer
        # Derived from the Trainer (max_epochs/max_steps, limit_train_batches, accumulation, devices):
        # the schedule ends exactly when training does, whatever the config says.
        steps = self.trainer.estimated_stepping_batches
        if math.isinf(steps) and SCHEDULE_LENGTH.get(built_class(self.make_scheduler)):
            raise UserError(
                "the learning-rate schedule spans the whole run, but this run has no end (max_epochs -1): "
                "set trainer.max_epochs or trainer.max_steps, or model.init_args.scheduler: null"
            )
        scheduler = self._build_scheduler(optimizer, max(1, int(min(steps, 2**62))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _build_scheduler(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        assert self.make_scheduler is not None
        length = SCHEDULE_LENGTH.get(built_class(self.make_scheduler))
        return self.make_scheduler(optimizer, **({length: total_steps} if length else {}))

    def _check_optimization(self) -> None:
        """Build the optimizer and scheduler once on a stand-in parameter, so that a bad argument
        (lr: -0.1) stops the run before it starts, in one line, rather than when training begins."""
        try:  # torch's own checks raise ValueError ("Invalid learning rate: -0.1") or TypeError
            optimizer = self.make_optimizer([nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as e:
            raise UserError(f"model.init_args.optimizer: {e}") from None
        try:
            if self.make_scheduler is not None:
                self._build_scheduler(optimizer, total_steps=1)
        except (ValueError, TypeError) as e:
            raise UserError(f"model.init_args.scheduler: {e}") from None

    def on_train_start(self) -> None:
        # A resumed run restores the original LR schedule, whose length was fixed at the start; a
        # schedule stretched or cut mid-run means nothing (OneCycle even fails at its last step).
        if self.trainer.ckpt_path is None:
            # Not a resumed run: its schedule was built for it (a finder's few trial steps, finders.py,
            # run with the schedule of the whole run, which they never reach the end of).
            return
        expected = self.trainer.estimated_stepping_batches
        for config in self.trainer.lr_scheduler_configs:
            length = SCHEDULE_LENGTH.get(type(config.scheduler))
            planned = getattr(config.scheduler, length) if length else None
            if planned is not None and int(planned) != expected:
                raise UserError(
                    f"the checkpoint's learning-rate schedule spans {planned} steps but this run has "
                    f"{expected}: resume with the original trainer.max_epochs/max_steps/limit_train_batches "
                    f"(or model.init_args.scheduler: null); to train longer, start a new run"
                )

    def _plain_hyperparameters(self) -> None:
        """From a config, LightningCLI saves the optimizer and scheduler as plain {class_path,
        init_args}. Built in Python, they are a class or a partial, which the safe checkpoint loader
        would refuse: store those as the same plain spec, rebuilt on load the way LightningCLI's are."""
        for name in ("optimizer", "scheduler"):
            factory = self.hparams.get(name)
            if factory is None or isinstance(factory, dict):
                continue
            product = built_class(factory)
            if product is None:  # e.g. a lambda: nothing plain to say, load_from_checkpoint uses the default
                del self.hparams[name]
                continue
            init_args = dict(factory.keywords) if isinstance(factory, functools.partial) else {}
            self.hparams[name] = {
                "class_path": f"{product.__module__}.{product.__qualname__}",
                "init_args": init_args,
            }
            self.hparams.setdefault("_instantiator", "pytorch_lightning.cli.instantiate_module")

    # ---- helpers for variants -----------------------------------------------------------------

    @staticmethod
    def flat_features(module: nn.Module, in_shape: tuple[int, ...]) -> int:
        """Number of features `module` outputs per sample for inputs of `in_shape`.

        Traced with one zero input in eval mode, so BatchNorm statistics are left untouched."""
        was_training = module.training
        with torch.no_grad():
            out = module.eval()(torch.zeros(1, *in_shape))
        module.train(was_training)
        return math.prod(out.shape[1:])


def built_class(factory: Any) -> type | None:
    """The class an optimizer or scheduler factory builds: the factory itself, or the class inside
    the `functools.partial` that jsonargparse makes of a config's class_path and init_args."""
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        return next((arg for arg in (factory.func, *factory.args) if isinstance(arg, type)), None)
    return None
