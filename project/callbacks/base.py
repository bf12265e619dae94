"""`EpochCallback`: the shared base of callbacks that look at a whole validation or test epoch.

A subclass says what to keep from each batch, what to make of it once the epoch ends, and how to
draw that::

    class MeanConfidence(EpochCallback):
        def reset(self, pl_module):                    # at the start of every (real) epoch
            self.total = torch.zeros((), device=pl_module.device)
        def update(self, example, prediction, pl_module):   # each batch: O(batch), on the device
            self.total += prediction.confidence.sum()
        def emit(self, trainer, pl_module, out):       # once, at the epoch's end, on every rank
            out.scalar("mean_confidence", mean := self.total / ...)
            return mean                                # what `draw` needs (None: nothing to draw)
        def draw(self, drawing, out):                  # rank 0, when the schedule below says so
            out.figure("mean_confidence", a_figure_of(drawing))

The base skips the sanity check, resets at each epoch start (so epochs never mix), and calls `emit`
on every DDP rank for every epoch (syncs inside it are collective; scalars are logged every epoch).
`out` (a `VisualLog`) writes and logs on rank 0 only.

The visual schedule, in one place: drawing (matplotlib, PNG encoding, W&B media) costs far more than
collecting, so a fit draws only the validation epochs a person looks at:
- the last validation epoch of the fit, drawn as soon as it is known to be the last (the epoch
  `max_epochs` ends, or `max_steps` is reached), so a run killed afterwards still has its PNGs; when the
  end comes otherwise (early stopping, a time limit, Ctrl-C) at the end of the fit;
- the best validation epoch by the monitored metric of the first ModelCheckpoint (`val/acc` in
  configs/defaults.yaml), drawn when the fit ends if it is not the last (W&B and TensorBoard keys
  `val/best/...`, at that epoch's step; its PNGs in `plots/val/epoch_<n>/` like any epoch's);
- every n-th epoch when `every_n_epochs` is set (0, the default: none besides the two above);
- every test, and every validation outside fit (`validate`): always.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn

from project.callbacks.visual_log import VisualLog
from project.errors import UserError
from project.structs import Example, Prediction

STAGES = ("val", "test")


@dataclass
class Pending:
    """One validation epoch's drawing, kept (on rank 0) until the schedule draws it or drops it."""

    drawing: Any
    out: VisualLog
    epoch: int
    drawn: bool = False


class EpochCallback(pl.Callback):
    """The base of callbacks that look at a whole validation or test epoch: subclass it (see above)."""

    def __init__(self, stages: tuple[str, ...] = STAGES, every_n_epochs: int = 0) -> None:
        """
        Args:
            stages: the loops to watch: "val", "test" or both.
            every_n_epochs: also draw every n-th validation epoch of a fit (0: only the best and the
                last; see the schedule above). Each drawn epoch costs ~0.1-0.7 s on a 2-core CPU.
        """
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise UserError(f"unknown stages {sorted(unknown)}; choose from {list(STAGES)}")
        if every_n_epochs < 0:
            raise UserError(f"every_n_epochs must be 0 (off) or more, got {every_n_epochs}")
        self.stages = tuple(stages)
        self.every_n_epochs = every_n_epochs
        self._latest: Pending | None = None  # the newest validation epoch of this fit
        self._best: Pending | None = None

    # ---- what a subclass implements -----------------------------------------------------------

    def reset(self, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog) -> Any:
        """The epoch's result, on every rank: log scalars, return what `draw` needs (None: nothing)."""
        raise NotImplementedError

    def draw(self, drawing: Any, out: VisualLog) -> None:
        """Render `emit`'s result (rank 0 only; not every epoch, see the schedule above)."""

    # ---- the schedule -------------------------------------------------------------------------------

    def _active(self, trainer: pl.Trainer, stage: str) -> bool:
        return stage in self.stages and not trainer.sanity_checking

    def _draw(self, pending: Pending | None) -> None:
        if pending is not None and not pending.drawn:
            pending.drawn = True
            self.draw(pending.drawing, pending.out)

    def _known_last(self, trainer: pl.Trainer) -> bool:
        epochs_done = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0
        steps_done = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        return epochs_done or steps_done

    def _improved(self, trainer: pl.Trainer) -> bool:
        """Whether this validation epoch beats every earlier one by the first ModelCheckpoint's metric: the
        checkpoint's own best so far (restored on resume), which it updates only after this hook."""
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if value is None or not torch.isfinite(torch.as_tensor(value)):
            return False
        best = getattr(checkpoint, "best_model_score", None)
        if best is None or not torch.isfinite(best):
            return True
        return bool(value > best) if getattr(checkpoint, "mode", "min") == "max" else bool(value < best)

    def _schedule(self, trainer: pl.Trainer) -> None:
        """After a fit's validation epoch (its metrics are final now): draw it, keep it, or let it go."""
        latest = self._latest
        if latest is None or latest.epoch != trainer.current_epoch or latest.drawn:
            return
        if self._improved(trainer):
            self._best = latest
        every = self.every_n_epochs > 0 and (latest.epoch + 1) % self.every_n_epochs == 0
        if every or self._known_last(trainer):
            self._draw(latest)

    def _fit_ends(self) -> None:
        """Draw the last epoch (if its end was not foreseen) and the best one, as `val/best/...`."""
        self._draw(self._latest)
        if self._best is not None and not self._best.drawn:
            self._best.out.as_best()
            self._draw(self._best)
        self._latest = self._best = None

    # ---- Lightning hooks, written once ----------------------------------------------------------

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
        if not self._active(trainer, stage):
            return
        out = VisualLog(trainer, pl_module, stage)
        drawing = self.emit(trainer, pl_module, out)  # on every rank: it may sync
        if drawing is None or not out.enabled:
            return
        pending = Pending(drawing, out, trainer.current_epoch)
        if stage == "val" and trainer.state.fn == TrainerFn.FITTING:
            self._latest = pending  # drawn or not in on_validation_end, once the metrics are final
        else:
            self._draw(pending)

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

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._schedule(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ends()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        try:  # Ctrl-C, a NaN stop: what was reached is still drawn
            self._fit_ends()
        except Exception as error:  # the run's own error is the one to report
            rank_zero_warn(f"{type(self).__name__} could not draw the last epochs: {error}")
