"""`NonFiniteLossGuard`: training stops at the first NaN or infinite loss, before it reaches the weights.

The check runs just before the backward pass, so the optimizer never steps on the bad loss and no
checkpoint of damaged weights is written: the last good `last.ckpt` stays as it was. The message
names the epoch, the global step, the batch and the dataset indices in it. Then rerun with
`--trainer.detect_anomaly true` to find the operation that produced the value.

Cost: one scalar copied to the host per step (a sync on a GPU); drop the callback from the config
to go without it.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from project.errors import UserError
from project.structs import Example

SHOWN_INDICES = 16


class NonFiniteLossGuard(pl.Callback):
    """Stops training at the first NaN or infinite loss, before it reaches the weights or a checkpoint."""

    def __init__(self) -> None:
        self._batch: Any = None
        self._batch_idx = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if bool(torch.isfinite(loss).all()):
            return
        indices = ""
        if isinstance(self._batch, Example) and self._batch.index is not None:
            shown = self._batch.index[:SHOWN_INDICES].tolist()
            more = " ..." if len(self._batch.index) > SHOWN_INDICES else ""
            indices = f" (dataset indices {shown}{more})"
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none was saved yet"
        raise UserError(
            f"the training loss is {loss.item()} at epoch {trainer.current_epoch}, global step "
            f"{trainer.global_step}, batch {self._batch_idx}{indices}. Training stopped before this step "
            f"changed the weights; the last good checkpoint is {checkpoint}. To find the operation that "
            f"produced it, rerun with --trainer.detect_anomaly true"
        )
