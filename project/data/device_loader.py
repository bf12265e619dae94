"""The device loader: a split held on the training device, batched, augmented and normalized there.

    images, labels, indices = to_device(dataset, device)      # the split's images move once
    batches = DeviceBatches(images, labels, indices, batch_size=1024, mean=..., std=...,
                            shuffle=True, augmentation=Augmentation(crop_padding=2, flip=True))
    for example in batches: ...   # one epoch of `Example`s, already on `device`

`ClassificationDataModule(device_loader=True)` serves its train, val and test splits this way. No
worker process decodes and no batch crosses the PCIe bus: on a GPU this takes the loader off the
critical path of a small network (the idea behind airbench's 94 % CIFAR-10 in seconds); on a CPU it
still works, with the same batches.

Shuffling is seeded from a seed and the epoch number, drawn on the CPU so that every device and
every DDP rank computes the same order. Augmentation draws from a generator on the device, seeded
per epoch, rank and batch. So a run resumed from a checkpoint, even one saved in the middle of an
epoch, reads the batches the unbroken run would have read (`resume`, see resumable.py).

Lightning accepts any iterable with `__len__` as a dataloader, but applies its DistributedSampler
only to `torch.utils.data.DataLoader`s: under DDP these loaders shard themselves (`shard`), by rank
of world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from project.data.dataset import ImageDataset
from project.data.device_augment import Augmentation, FusedNormalize
from project.structs import Example

if TYPE_CHECKING:
    from project.data.resumable import Resume


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} for world_size {world_size}, got {rank}")


def shard(order: Tensor, rank: int, world_size: int, even: bool) -> Tensor:
    """The part of `order` that DDP rank `rank` of `world_size` reads: positions rank, rank + world_size, ...

    `even=True` (training) first drops the last `len(order) % world_size` entries, so that every rank
    gets the same number of samples and batches: DDP synchronizes gradients at every step, and a
    rank with one batch more would wait forever. With a fresh shuffle each epoch, a different
    handful of samples is dropped each time. `even=False` (evaluation) drops nothing, so each sample
    is evaluated exactly once; shards then differ in length by at most one, which evaluation, with
    no per-step collective, allows (as `UnrepeatedDistributedSampler` does for the CPU loaders)."""
    check_rank(rank, world_size)
    if even:
        order = order[: len(order) - len(order) % world_size]
    return order[rank::world_size]


def seeded_generator(
    seed: int, epoch: int, stream: int = 0, device: torch.device | str = "cpu", *, batch: int = 0
) -> torch.Generator:
    """A generator on `device` whose state depends on (seed, epoch, stream, batch) only.

    The numbers are mixed by NumPy's SeedSequence, so nearby values (seed 1 epoch 0, seed 0
    epoch 1) give unrelated streams, unlike `manual_seed(seed + epoch)`."""
    entropy = [seed % 2**64, epoch, stream] + ([batch] if batch else [])  # batch 0: the epoch's own stream
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:  # a device type without generators of its own: draw on the CPU instead
        generator = torch.Generator()
    return generator.manual_seed(int(state))


class DeviceBatches:
    """An iterable of `Example` batches gathered from images already on their device.

        batches = DeviceBatches(images, labels, indices, batch_size=512, mean=..., std=...,
                                shuffle=True, augmentation=Augmentation(crop_padding=4, flip=True))
        len(batches)          # batches per epoch (on this rank)
        for example in batches: ...   # Example(image=(B, C, H, W) float32, label=(B,), index=(B,))

    `images` are (N, C, H, W) uint8 (or float 0..1), `labels` (N,) or None, and `indices` (N,) the
    position of each image in its dataset (what `Example.index` reports). Each iteration is one
    epoch; its number comes from `epoch()` (the trainer's `current_epoch`), or, without it, from a
    count of the iterations started here; `resume()` (given a position, once) starts at a batch of an
    epoch. `augmentation` applies to every batch (training only)."""

    SHUFFLE_STREAM = 0
    AUGMENT_STREAM = 1

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        indices: Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        shuffle: bool = False,
        augmentation: Augmentation | None = None,
        channels_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: Callable[[], int] | None = None,
        resume: Resume | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(indices) != len(images) or (labels is not None and len(labels) != len(images)):
            raise ValueError("images, labels and indices must have the same length")
        check_rank(rank, world_size)
        self.images, self.labels, self.indices = images, labels, indices.to(images.device)
        self.batch_size = batch_size
        self.normalize = FusedNormalize(mean, std)
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.channels_last = channels_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = epoch
        self.resume = resume
        self.iterations = 0

    @property
    def device(self) -> torch.device:
        return self.images.device

    def num_samples(self) -> int:
        """Samples this rank reads per epoch."""
        return len(shard(torch.arange(len(self.images)), self.rank, self.world_size, even=self.shuffle))

    def __len__(self) -> int:
        return math.ceil(self.num_samples() / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """Positions (into `images`) this rank reads in `epoch`, in reading order, on the images' device.

        The permutation is drawn on the CPU, so that it is the same on every rank and device."""
        if self.shuffle:
            generator = seeded_generator(self.seed, epoch, self.SHUFFLE_STREAM)
            order = torch.randperm(len(self.images), generator=generator)
        else:
            order = torch.arange(len(self.images))
        return shard(order, self.rank, self.world_size, even=self.shuffle).to(self.device)

    def __iter__(self) -> Iterator[Example]:
        # A generator: the epoch and start are decided at the first next(), when Lightning starts
        # reading, not when it merely checks that the loader is iterable.
        position = self.resume() if self.resume is not None else None
        if position is not None:
            epoch, skip = position
        else:
            epoch, skip = (self.epoch() if self.epoch is not None else self.iterations), 0
        self.iterations += 1
        order = self.order(epoch)
        stream = self.AUGMENT_STREAM + self.rank  # ranks read other images: decorrelate their draws
        for batch in range(skip, math.ceil(len(order) / self.batch_size)):
            positions = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.images[positions]
            if self.augmentation is not None:
                # Seeded per batch: batch b is augmented alike whether or not batches before it were read.
                generator = seeded_generator(self.seed, epoch, stream, self.device, batch=batch + 1)
                images = self.augmentation(images, generator)
            if self.channels_last:  # before normalizing: the float tensor is written in this layout once
                images = images.contiguous(memory_format=torch.channels_last)
            yield Example(
                image=self.normalize(images),
                label=None if self.labels is None else self.labels[positions],
                index=self.indices[positions],
            )


def to_device(dataset: ImageDataset, device: torch.device) -> tuple[Tensor, Tensor | None, Tensor]:
    """The dataset's images, labels and indices on `device`, in the dataset's order."""
    # Only this split's images, gathered on the host: one copy of the split (138 MB for CIFAR-10's
    # training split), not of the whole pool.
    labels = None if dataset.labels is None else dataset.labels[dataset.indices].to(device)
    return dataset.images[dataset.indices].to(device), labels, dataset.indices.to(device)
