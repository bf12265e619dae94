"""Training batches that a checkpoint saved in the middle of an epoch resumes exactly.

Lightning restores a checkpoint's loop counters, but the batches come from the train loader, which
starts each epoch at its first batch: a run resumed from a checkpoint saved after step k of an epoch
would read those k batches again (the epoch runs long, and a whole-run schedule such as OneCycleLR
steps past its end). So the training split is read in an order that depends only on (seed, epoch),
and can start at any batch of it:

- `train_position(trainer)`: the (epoch, batch) the next training batch would be, recorded in every
  checkpoint by `ClassificationDataModule.state_dict`, handed back on resume, used once.
- `EpochSampler`: the DataLoader's order, a per-epoch permutation of `seed` and one shard per DDP
  rank (torch's DistributedSampler, which Lightning then leaves in place), from that batch on. Each
  index comes with an augmentation seed, so a batch's random crops do not depend on how many
  batches were augmented before it, nor on the worker that loads it.
- `SeededSamples`: reads each batch under the seed of its first sample (the global generator forked,
  not disturbed).
The device loader (`device_loader.py`) seeds its batches the same way.

Why the DataModule's state and not the DataLoader's own `state_dict`: a scheduler that asks for
`trainer.estimated_stepping_batches` (OneCycleLR here) makes Lightning build and start the train
loader before it loads the checkpoint, and it then never hands the loader its saved state
(Lightning issue #20550); the DataModule's state is loaded before that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.loops.progress import _ProcessedTracker
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import Dataset, DistributedSampler

from project.data.device_loader import DeviceBatches, seeded_generator
from project.structs import Example


class TrainPosition(NamedTuple):
    epoch: int
    batch: int
    """Batches of `epoch` already trained: the next one read is this one (0-based)."""

    @classmethod
    def from_state(cls, state: Any) -> TrainPosition | None:
        """The position a checkpoint recorded; None for anything else (an older or foreign file)."""
        if not isinstance(state, dict):
            return None
        epoch, batch = state.get("epoch"), state.get("batch")
        if type(epoch) is not int or type(batch) is not int or epoch < 0 or batch < 0:
            return None
        return cls(epoch, batch)


def train_position(trainer: pl.Trainer) -> TrainPosition | None:
    """Where training goes on after this moment of a fit: the rest of this epoch, or the next one."""
    if trainer.state.fn != TrainerFn.FITTING:
        return None
    # `processed` counts the batches whose training step ran: the checkpoint written in
    # on_train_batch_end of batch k holds its update, so batch k + 1 comes next. Lightning has already
    # fetched that batch (it reads one ahead), so the loader's own count of batches would be one too many.
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    assert isinstance(current, _ProcessedTracker)  # what Lightning's batch progress holds (typed as its base)
    done = current.processed
    epoch = trainer.current_epoch
    if done >= trainer.num_training_batches:
        return TrainPosition(epoch + 1, 0)
    return TrainPosition(epoch, done)


Resume = Callable[[], TrainPosition | None]
"""The position a resumed run starts its first training epoch at; None: start as usual."""


def augmentation_seeds(seed: int, epoch: int, size: int) -> list[int]:
    """One seed per sample of a split for `epoch`: what augments sample i does not depend on order."""
    generator = seeded_generator(seed, epoch, DeviceBatches.AUGMENT_STREAM)
    return torch.randint(2**62, (size,), generator=generator).tolist()


class EpochSampler(DistributedSampler[Any]):
    """The training split's order: a permutation per (seed, epoch), this rank's shard of it.

    Yields dataset positions, or `(position, augmentation seed)` pairs for `SeededSamples` when
    `augment`. `resume()` is asked at the start of each epoch's reading; a position it gives sets the
    epoch and the batches to skip. Lightning's `set_epoch` sets the epoch otherwise; a hand-written
    loop that never calls it still gets the next epoch's order each time it reads the loader again."""

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        seed: int,
        augment: bool,
        resume: Resume,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.augment, self.resume = batch_size, augment, resume
        self.epoch_read = False  # whether this epoch's order was handed out since set_epoch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.epoch_read = False

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        position = self.resume()
        if position is not None:
            self.set_epoch(position.epoch)
            skip = position.batch * self.batch_size
        elif self.epoch_read:  # read again without a set_epoch: the next epoch
            self.set_epoch(self.epoch + 1)
        self.epoch_read = True
        positions = list(super().__iter__())[skip:]
        if not self.augment:
            return iter(positions)
        seeds = augmentation_seeds(self.seed, self.epoch, len(self.dataset))  # type: ignore[arg-type]
        return iter([(i, seeds[i]) for i in positions])


class SeededSamples(Dataset[Example]):
    """The dataset's samples under the random seed the sampler sent with them; a plain `i` (e.g.
    from Lightning's overfit_batches sampler) reads as the dataset would.

    The DataLoader asks for a whole batch at once (`__getitems__`), which is augmented under the seed
    of its first sample: one reseed per batch, not per sample (a reseed costs about as much as a
    sample's crop and flip). Batches are cut from the epoch's order at fixed positions, so a batch
    holds the same samples, and gets the same seed, whether or not the batches before it were read."""

    def __init__(self, dataset: Dataset[Example]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Example:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[int | tuple[int, int]]) -> list[Example]:
        first = keys[0] if keys else None
        if not isinstance(first, tuple):
            return [self.dataset[key] for key in keys]
        # Only the CPU generator is forked and seeded (torch.manual_seed would reseed CUDA's too).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(first[1])
            return [self.dataset[key[0]] for key in keys]  # type: ignore[index]  # all pairs
