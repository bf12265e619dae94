"""`BaseModel`: the training/evaluation loop written once, in terms of the structs.

A variant subclasses it and overrides what differs, usually only `__init__` (its layers) and
`forward`::

    class MyNet(BaseModel[Example, Prediction]):
        def __init__(self, num_classes: int, in_shape: tuple[int, int, int], width: int = 64, **kwargs):
            super().__init__(num_classes, in_shape, **kwargs)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width), ...)

        def forward(self, example: Example) -> Prediction:
            return Prediction(logits=self.net(example.image))

Override `compute_loss` for another objective (it returns a `Loss` of named, weighted terms: the
total is logged every step, and each term too when there are several) and `create_metrics` for
other metrics (updated every step, logged once per epoch). `num_classes` and `in_shape` are filled in
from the DataModule by the CLI, so model and data cannot disagree.

Every constructor argument must be a plain value (number, string, tuple): `save_hyperparameters`
stores them in the checkpoint, which `load_from_checkpoint` reads back with torch's safe
`weights_only` loader and no extra arguments.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Generic, Literal, TypeVar

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from project.errors import UserError
from project.metrics import ClassificationMetrics, ExampleMetrics
from project.model.pretrained import PretrainedConfig, load_pretrained
from project.model.terms import ConfiguredMetrics, LossTermConfig, LossTerms, MetricTermConfig
from project.structs import Example, Loss, Prediction

Stage = Literal["train", "val", "test"]
E = TypeVar("E", bound=Example)
P = TypeVar("P", bound=Prediction)


class BaseModel(pl.LightningModule, Generic[E, P]):
    """Generic over its input `E` and output `P` types, so mypy checks a variant's field use."""

    # The struct types at run time: config-declared losses and metrics check their field names here.
    example_type: ClassVar[type[Example]] = Example
    prediction_type: ClassVar[type[Prediction]] = Prediction

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        scheduler: Literal["onecycle", "cosine", "none"] = "onecycle",
        label_smoothing: float = 0.0,
        losses: list[LossTermConfig] | None = None,
        metrics: list[MetricTermConfig] | None = None,
        pretrained: list[PretrainedConfig] | None = None,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: input (channels, height, width) (linked from the DataModule).
            optimizer: "adamw" or "sgd" (SGD uses `momentum` with Nesterov).
            lr: learning rate; the peak rate for "onecycle", the start rate for "cosine".
            weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
            momentum: SGD momentum; ignored by AdamW.
            scheduler: "onecycle" (warm-up then anneal), "cosine" (anneal to 0) or "none"; both
                schedules span the whole run, counted in optimizer steps from the Trainer.
            label_smoothing: cross-entropy label smoothing, 0 to disable.
            losses: loss terms from the config (see model/terms.py); default: `compute_loss`.
            metrics: metrics from the config (see model/terms.py); default: `create_metrics`.
            pretrained: sub-modules to load from earlier runs when fit starts, optionally frozen
                (see model/pretrained.py).
        """
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes must be at least 2, got {num_classes}")
        if lr <= 0:
            raise UserError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.in_shape = tuple(in_shape)
        self.loss_terms = LossTerms(losses, self.example_type, self.prediction_type) if losses else None
        self.metric_terms = metrics
        self.pretrained = list(pretrained or [])
        self.frozen: list[nn.Module] = []
        # One collection per stage: each accumulates its own epoch. Not a ModuleDict keyed by stage,
        # because "train" would clash with nn.Module.train.
        self.train_metrics = self.create_metrics("train/")
        self.val_metrics = self.create_metrics("val/")
        self.test_metrics = self.create_metrics("test/")

    # ---- what a variant overrides -------------------------------------------------------------

    def forward(self, example: E) -> P:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(example) -> Prediction")

    def compute_loss(self, example: E, prediction: P) -> Loss:
        if self.loss_terms is not None:
            return self.loss_terms(example, prediction)
        ce = F.cross_entropy(
            prediction.logits, example.require_label(), label_smoothing=self.hparams["label_smoothing"]
        )
        return Loss({"ce": ce})

    def create_metrics(self, prefix: str) -> ExampleMetrics:
        if self.hparams.get("metrics"):
            return ConfiguredMetrics(
                self.hparams["metrics"],
                self.num_classes,
                self.example_type,
                self.prediction_type,
                prefix=prefix,
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

    def _shared_step(self, example: E, stage: Stage) -> tuple[P, Loss]:
        prediction: P = self(example)
        loss = self.compute_loss(example, prediction)
        self._metrics(stage).update_from(example, prediction)
        training = stage == "train"
        # Lightning spends ~0.2 ms on every `self.log` call, as much as a whole small-model step on a
        # CPU, so a step logs only its losses; metrics are logged once per epoch (`_log_metrics`).
        # Validation/test loss means are reduced across DDP ranks once, at epoch end. Training losses
        # are logged every step, and syncing those would add a collective to every step: they stay
        # per rank (rank 0's are what the loggers show).
        self.log_dict(
            loss.log_dict(stage),
            on_step=training,
            on_epoch=True,
            batch_size=len(example),
            sync_dist=not training,
        )
        return prediction, loss

    def _log_metrics(self, stage: Stage) -> None:
        """Log the epoch's metrics and start afresh. torchmetrics' compute() syncs across DDP ranks."""
        metrics = self._metrics(stage)
        if any(metric.update_count for metric in metrics.values(copy_state=False)):
            self.log_dict(metrics.compute())
        metrics.reset()

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
        prediction: P = self(batch)
        return prediction

    # ---- optimization -------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
        if hp["optimizer"] == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        elif hp["optimizer"] == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=hp["lr"], momentum=hp["momentum"], nesterov=True, weight_decay=hp["weight_decay"]
            )
        else:
            raise UserError(f"optimizer must be 'adamw' or 'sgd', got {hp['optimizer']!r}")
        if hp["scheduler"] == "none":
            return optimizer
        # Derived from the Trainer (max_epochs/max_steps, limit_train_batches, accumulation, devices):
        # the schedule ends exactly when training does, whatever the config says.
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if hp["scheduler"] == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp["lr"], total_steps=total_steps
            )
        elif hp["scheduler"] == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        else:
            raise UserError(f"scheduler must be 'onecycle', 'cosine' or 'none', got {hp['scheduler']!r}")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # A resumed run restores the original LR schedule, whose length was fixed at the start; a
        # schedule stretched or cut mid-run means nothing (OneCycle even fails at its last step).
        expected = int(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            planned = getattr(config.scheduler, "total_steps", None) or getattr(
                config.scheduler, "T_max", None
            )
            if planned is not None and int(planned) != expected:
                raise UserError(
                    f"the checkpoint's learning-rate schedule spans {planned} steps but this run has "
                    f"{expected}: resume with the original trainer.max_epochs/max_steps/limit_train_batches "
                    f"(or model.init_args.scheduler: none); to train longer, start a new run"
                )

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
