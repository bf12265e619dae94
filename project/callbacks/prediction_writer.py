"""`PredictionWriter`: `predict` writes one CSV row per sample to the run directory.

    index,pred,class,confidence
    17,3,cat,0.912

`index` is the sample's position in the dataset (see `Example.index`). Under DDP every rank writes
its own `predictions.rank<N>.csv`, since each sees a different shard of the data.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from project.structs import Example, Prediction


class PredictionWriter(BasePredictionWriter):
    """Makes `predict` write one CSV row per sample (index, pred, class, confidence) to the run directory."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self._rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert isinstance(prediction, Prediction) and isinstance(batch, Example)
        index = batch.index if batch.index is not None else torch.full((len(batch),), -1)
        # Kept on the device; copied to the host once, at epoch end.
        self._rows.append((index, prediction.pred, prediction.confidence))

    def path(self, trainer: pl.Trainer) -> Path:
        name = self.filename
        if trainer.world_size > 1:
            name = f"{Path(self.filename).stem}.rank{trainer.global_rank}.csv"
        return Path(trainer.default_root_dir) / name

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        columns = [torch.cat(column).cpu().tolist() for column in zip(*self._rows, strict=True)]
        rows = zip(*columns, strict=True) if columns else iter(())
        class_names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "pred", "class", "confidence"])
            for index, pred, confidence in rows:
                name = class_names[int(pred)] if class_names else ""
                writer.writerow([int(index), int(pred), name, f"{confidence:.6f}"])
        self._rows = []
