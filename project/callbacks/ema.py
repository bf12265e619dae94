"""`EMA`: Lightning's `EMAWeightAveraging`, with checkpoint loading fixed for the test after a fit.

Validation sees the averaged weights and every checkpoint stores them as its `state_dict` (the trained
weights beside them, under `current_model_state`, to resume training exactly): Lightning does both.
Lightning's callback also restores the trained weights whenever a checkpoint is loaded while its
average model exists, which after a fit it still does: the test after fit would load the best
checkpoint and then score the trained weights, not the averaged ones the checkpoint holds (a test
caught it). Here only a fit's resume restores them; validate, test and predict keep the averages.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    """An exponential moving average of the weights, used by validation, test, predict and checkpoints."""

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # a resume: the average and the trained weights both return
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
