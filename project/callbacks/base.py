"""`EpochCallback`: the shared base of callbacks that look at a whole validation or test epoch.

A subclass says what to keep from each batch and what to make of it once the epoch ends::

    class MeanConfidence(EpochCallback):
        def reset(self, pl_module):                    # at the start of every (real) epoch
            self.total = torch.zeros((), device=pl_module.device)
        def update(self, example, prediction, pl_module):   # each batch: O(batch), on the device
            self.total += prediction.confidence.sum()
        def emit(self, trainer, pl_module, out):       # once, at the epoch's end
            out.scalar("mean_confidence", self.total / ...)

The base skips the sanity check, resets at each epoch start (so epochs never mix), and calls
`emit` on every DDP rank (syncs inside it are collective); `out` (a `VisualLog`) writes and logs
on rank 0 only.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from project.callbacks.visual_log import VisualLog
from project.errors import UserError
from project.structs import Example, Prediction

STAGES = ("val", "test")


class EpochCallback(pl.Callback):
    """The base of callbacks that look at a whole validation or test epoch: subclass it (see above)."""

    def __init__(self, stages: tuple[str, ...] = STAGES, every_n_epochs: int = 1) -> None:
        """
        Args:
            stages: the loops to watch: "val", "test" or both.
            every_n_epochs: watch validation every n-th epoch only (and always the last). Drawing costs
                a fixed ~0.1-0.5 s per epoch: raise this when epochs take only seconds.
        """
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise UserError(f"unknown stages {sorted(unknown)}; choose from {list(STAGES)}")
        if every_n_epochs < 1:
            raise UserError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.stages = tuple(stages)
        self.every_n_epochs = every_n_epochs

    # ---- what a subclass implements -----------------------------------------------------------

    def reset(self, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog) -> None:
        raise NotImplementedError

    # ---- Lightning hooks, written once ----------------------------------------------------------

    def _active(self, trainer: pl.Trainer, stage: str) -> bool:
        if stage not in self.stages or trainer.sanity_checking:
            return False
        if stage == "val" and self.every_n_epochs > 1:
            epoch, last = trainer.current_epoch, (trainer.max_epochs or 0) - 1
            return (epoch + 1) % self.every_n_epochs == 0 or epoch == last
        return True

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._active(trainer, stage):
            self.reset(pl_module)

    def _batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, stage: str
    ) -> None:
        if self._active(trainer, stage):
            if not isinstance(outputs, Prediction) or not isinstance(batch, Example):
                raise TypeError(
                    f"{type(self).__name__} needs {stage} steps that take an Example and return a Prediction "
                    f"(as BaseModel's do); got {type(batch).__name__} -> {type(outputs).__name__}"
                )
            self.update(batch, outputs, pl_module)

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._active(trainer, stage):
            self.emit(trainer, pl_module, VisualLog(trainer, pl_module, stage))

    # Lightning's hooks, grouped by moment: each hands over to the shared code above with its stage.
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._batch(trainer, pl_module, outputs, batch, "val")

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._batch(trainer, pl_module, outputs, batch, "test")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "test")
