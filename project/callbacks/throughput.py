"""`Throughput`: samples/s, batches/s, FLOP/s and model FLOPs utilisation, logged once per epoch.

    perf/train_samples_per_sec   perf/train_batches_per_sec   perf/train_flops_per_sec   perf/train_mfu
    perf/val_samples_per_sec     perf/val_batches_per_sec     perf/val_flops_per_sec     perf/val_mfu

The arithmetic is Lightning's: `lightning_fabric`'s `Throughput` (what `ThroughputMonitor` feeds),
FLOPs counted by its `measure_flops` on a meta-device pass (no compute, no memory) of one training batch
(forward + backward) and one validation batch (forward), and the device's peak from its
`get_available_flops`: MFU is logged only where that peak is known (NVIDIA data-centre and recent
consumer GPUs, TPUs), never on a CPU. Why not `ThroughputMonitor` itself: it updates on every batch and,
on a GPU, synchronizes the device to do so, a host sync per step that the fast path exists to avoid; here
the device is synchronized at the ends of an epoch's training and validation only. Training time excludes
the validation inside the epoch. Under DDP the rates are of all processes together (rank 0's count times
the number of processes), MFU per device.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.throughput import Throughput as Rates
from lightning_fabric.utilities.throughput import get_available_flops, measure_flops
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch.func import functional_call

from project.structs import Example

# trainer.precision -> the dtype its matmuls run in, which sets the device's peak FLOP/s.
COMPUTE_DTYPE = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}


class Throughput(pl.Callback):
    """Per epoch: samples/s, batches/s, FLOP/s and, where the device's peak is known, MFU (`perf/*`)."""

    def __init__(self, flops: bool = True) -> None:
        """
        Args:
            flops: count the model's FLOPs (for FLOP/s and MFU); off for a model whose forward cannot
                run on the meta device (one warning says so when that happens).
        """
        self.flops = flops
        self.peak: float | None = None
        self.flops_per_sample: dict[str, float | None] = {}
        self.clock = {"train": 0.0, "val": 0.0}  # seconds counted so far in this epoch's stage
        self.started: dict[str, float | None] = {"train": None, "val": None}
        self.counts = {"train": [0, 0], "val": [0, 0]}  # batches, samples
        self.next_batch = 0  # of the training epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        precision = str(trainer.precision)
        dtype = next(
            (d for prefix, d in COMPUTE_DTYPE.items() if precision.startswith(prefix)), torch.float32
        )
        self.peak = get_available_flops(trainer.strategy.root_device, dtype)

    # -- the clock: started and stopped at stage boundaries, with the device synchronized there ----------

    def _start(self, stage: str, trainer: pl.Trainer) -> None:
        self._sync(trainer)
        self.started[stage] = time.perf_counter()

    def _stop(self, stage: str, trainer: pl.Trainer) -> None:
        started = self.started[stage]
        if started is not None:
            self._sync(trainer)
            self.clock[stage] += time.perf_counter() - started
            self.started[stage] = None

    @staticmethod
    def _sync(trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def _reset(self, stage: str) -> None:
        self.clock[stage], self.started[stage], self.counts[stage] = 0.0, None, [0, 0]

    def _count(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> None:
        samples = len(batch)  # the shape, read on the host: no sync
        if stage not in self.flops_per_sample:
            self.flops_per_sample[stage] = self._measure(pl_module, batch, stage) if self.flops else None
        self.counts[stage][0] += 1
        self.counts[stage][1] += samples

    # -- hooks -----------------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset("train")
        self.next_batch = 0
        self._start("train", trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._count("train", pl_module, batch)
        self.next_batch = batch_idx + 1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._stop("train", trainer)  # the validation inside a training epoch is not training time
        self._reset("val")
        self._start("val", trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._count("val", pl_module, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._stop("val", trainer)
        self._log("val", trainer, pl_module)
        if self.next_batch < trainer.num_training_batches:  # mid-epoch (val_check_interval): training goes on
            self._start("train", trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop("train", trainer)
        self._log("train", trainer, pl_module)

    # -- the numbers -----------------------------------------------------------------------------------

    def _log(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches, samples = self.counts[stage]
        if not batches or self.clock[stage] <= 0:
            return
        per_sample = self.flops_per_sample.get(stage)
        flops = None if per_sample is None else int(per_sample * samples)
        rates = Rates(available_flops=self.peak, world_size=trainer.world_size, window_size=2)
        # Lightning's rates are differences between updates: the epoch's start, then its end.
        rates.update(time=0.0, batches=0, samples=0, flops=None if flops is None else 0)
        rates.update(time=self.clock[stage], batches=batches, samples=samples, flops=flops)
        computed = rates.compute()
        # With one process Lightning gives the device's rates only; with several, the global ones too.
        scope = "" if trainer.world_size > 1 else "device/"
        names = ("samples_per_sec", "batches_per_sec", "flops_per_sec")
        values = {name: computed.get(scope + name) for name in names}
        values["mfu"] = computed.get("device/mfu")
        for name, value in values.items():
            if value is not None:
                pl_module.log(f"perf/{stage}_{name}", float(value), rank_zero_only=True)

    def _measure(self, pl_module: pl.LightningModule, batch: Any, stage: str) -> float | None:
        """FLOPs per sample of one step: forward + backward for training, forward for validation.
        Counted on meta-device stand-ins of the parameters and the batch: no compute, no memory."""
        if not isinstance(batch, Example):
            return None
        size = len(batch)
        meta = {
            name: torch.empty_like(value, device="meta").requires_grad_(value.requires_grad)
            for name, value in [*pl_module.named_parameters(), *pl_module.named_buffers()]
        }
        example = Example(image=torch.empty_like(batch.image, device="meta"))

        def forward() -> torch.Tensor:
            return functional_call(pl_module, meta, (example,)).logits

        try:
            if stage == "train":
                return measure_flops(pl_module, forward, loss_fn=torch.Tensor.sum) / size
            with torch.no_grad():
                return measure_flops(pl_module, forward) / size
        except Exception as e:  # an operation without a meta kernel: rates are still logged
            rank_zero_warn(f"Throughput: FLOPs not counted ({type(e).__name__}: {e}); samples/s still logged")
            return None
