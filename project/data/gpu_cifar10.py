"""`DeviceCIFAR10DataModule`: CIFAR-10 held on the training device, batched and augmented there.

    dm = DeviceCIFAR10DataModule(data_dir="data", batch_size=1024, channels_last=True)
    trainer.fit(model, datamodule=dm)     # the uint8 images move to trainer.strategy.root_device once

The same files, download and seeded train/val split as `CIFAR10DataModule` (it is a subclass). What
differs is the loader: the whole split (45 000 x 3 x 32 x 32 uint8, 138 MB) is copied to the device
once, and every batch is gathered, cropped, flipped and normalized there by `gpu_augment`, so no
worker process decodes, and no batch crosses the PCIe bus. On a GPU this removes the data loader from
the critical path of a small network (the idea behind airbench's 94 % CIFAR-10 in seconds); on a CPU
it still works, with the same batches.

Shuffling is seeded from `shuffle_seed` (default: `seed`) and the epoch number, drawn on the CPU so
that every device and every DDP rank computes the same order; a resumed run continues with the
order of its epoch. Augmentation draws from a generator on the device, seeded per epoch and rank.

Lightning accepts any iterable with `__len__` as a dataloader, but applies its DistributedSampler
only to `torch.utils.data.DataLoader`s: under DDP these loaders shard themselves (`shard`), by
`trainer.global_rank` of `trainer.world_size`. Prediction keeps the CPU DataLoader of the base
class: it is no hot path, and Lightning's prediction writers expect a DataLoader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from project.data import gpu_augment
from project.data.cifar10 import CIFAR10DataModule
from project.data.gpu_augment import PaddingMode
from project.errors import UserError
from project.structs import Example


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
    seed: int, epoch: int, stream: int = 0, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A generator on `device` whose state depends on (seed, epoch, stream) only.

    The three numbers are mixed by NumPy's SeedSequence, so nearby values (seed 1 epoch 0, seed 0
    epoch 1) give unrelated streams, unlike `manual_seed(seed + epoch)`."""
    state = np.random.SeedSequence([seed % 2**64, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:  # a device type without generators of its own: draw on the CPU instead
        generator = torch.Generator()
    return generator.manual_seed(int(state))


class DeviceBatches:
    """An iterable of `Example` batches gathered from images already on their device.

        batches = DeviceBatches(images, labels, indices, batch_size=512, mean=..., std=...,
                                shuffle=True, crop_padding=4, flip=True)
        len(batches)          # batches per epoch (on this rank)
        for example in batches: ...   # Example(image=(B, C, H, W) float32, label=(B,), index=(B,))

    `images` are (N, C, H, W) uint8 (or float 0..1), `labels` (N,) or None, and `indices` (N,) the
    position of each image in its dataset (what `Example.index` reports). Each iteration is one
    epoch; its number comes from `epoch()` (the trainer's `current_epoch`), or, without it, from a
    count of the iterations started here."""

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
        crop_padding: int = 0,
        padding_mode: PaddingMode = "reflect",
        flip: bool = False,
        channels_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: Callable[[], int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(indices) != len(images) or (labels is not None and len(labels) != len(images)):
            raise ValueError("images, labels and indices must have the same length")
        check_rank(rank, world_size)
        self.images, self.labels, self.indices = images, labels, indices.to(images.device)
        self.batch_size = batch_size
        self.normalize = gpu_augment.FusedNormalize(mean, std)
        self.shuffle = shuffle
        self.crop_padding, self.padding_mode, self.flip = crop_padding, padding_mode, flip
        self.channels_last = channels_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = epoch
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
        # Decided now rather than at the first next(): the epoch is the trainer's when it asks for
        # the iterator.
        epoch = self.epoch() if self.epoch is not None else self.iterations
        self.iterations += 1
        generator = None
        if self.crop_padding > 0 or self.flip:
            stream = self.AUGMENT_STREAM + self.rank  # ranks read other images: decorrelate their draws
            generator = seeded_generator(self.seed, epoch, stream, self.device)
        return self._batches(self.order(epoch), generator)

    def _batches(self, order: Tensor, generator: torch.Generator | None) -> Iterator[Example]:
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            images = self.images[positions]
            if self.crop_padding > 0:
                images = gpu_augment.random_crop_padded(
                    images, self.crop_padding, generator, self.padding_mode
                )
            if self.flip:
                images = gpu_augment.random_flip(images, generator)
            if self.channels_last:  # before normalizing: the float tensor is written in this layout once
                images = images.contiguous(memory_format=torch.channels_last)
            yield Example(
                image=self.normalize(images),
                label=None if self.labels is None else self.labels[positions],
                index=self.indices[positions],
            )


class DeviceCIFAR10DataModule(CIFAR10DataModule):
    def __init__(
        self,
        channels_last: bool = False,
        crop_padding: int = 4,
        padding_mode: PaddingMode = "reflect",
        shuffle_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            channels_last: yield images in channels_last memory format (NHWC), which tensor-core
                convolutions prefer; pair it with the model's own `channels_last`.
            crop_padding: random translation of training images by up to this many pixels (pad, then
                crop back to 32x32), when `augment` is on; 0 disables it. The CPU module uses 4;
                airbench uses 2.
            padding_mode: "reflect" (as the CPU module) or "constant" (zeros).
            shuffle_seed: seed of the per-epoch shuffle and augmentation; None: `seed` (the split's).
            **kwargs: data_dir, download, augment (random translation + horizontal flip of training
                images), batch size, split and dev subset, see `CIFAR10DataModule`. The loader
                settings (num_workers, pin_memory, persistent_workers) apply to prediction only,
                which keeps the CPU DataLoader.
        """
        super().__init__(**kwargs)
        if crop_padding < 0 or crop_padding >= min(self.image_shape[1:]):
            raise UserError(f"crop_padding must be in 0..{min(self.image_shape[1:]) - 1}, got {crop_padding}")
        if padding_mode not in ("reflect", "constant"):
            raise UserError(f"padding_mode must be 'reflect' or 'constant', got {padding_mode!r}")
        self.channels_last = channels_last
        self.crop_padding = crop_padding
        self.padding_mode: PaddingMode = padding_mode
        self.shuffle_seed = self.seed if shuffle_seed is None else shuffle_seed
        # split -> (images, labels, indices) on the device, so a reloaded loader copies nothing again.
        self._on_device: dict[str, tuple[Tensor, Tensor | None, Tensor]] = {}

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _device_split(self, split: str, device: torch.device) -> tuple[Tensor, Tensor | None, Tensor]:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        cached = self._on_device.get(split)
        if cached is None or cached[0].device != device:
            dataset = self.datasets[split]
            labels = None if dataset.labels is None else dataset.labels[dataset.indices].to(device)
            # Only this split's images, gathered on the host: one copy of 138 MB (train), not the pool.
            cached = (dataset.images[dataset.indices].to(device), labels, dataset.indices.to(device))
            self._on_device[split] = cached
        return cached

    def _device_loader(self, split: str) -> DeviceBatches:
        device = self._device()
        images, labels, indices = self._device_split(split, device)
        train = split == "train"
        trainer = self.trainer
        return DeviceBatches(
            images,
            labels,
            indices,
            self.batch_size,
            self.mean,
            self.std,
            shuffle=train,
            crop_padding=self.crop_padding if train and self.augment else 0,
            padding_mode=self.padding_mode,
            flip=train and self.augment,
            channels_last=self.channels_last,
            seed=self.shuffle_seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
        )

    def train_dataloader(self) -> DeviceBatches:  # type: ignore[override]
        return self._device_loader("train")

    def val_dataloader(self) -> DeviceBatches:  # type: ignore[override]
        return self._device_loader("val")

    def test_dataloader(self) -> DeviceBatches:  # type: ignore[override]
        return self._device_loader("test")

    def teardown(self, stage: str) -> None:
        # Frees the device memory between fit and the test that follows it (each copies its own split).
        self._on_device.clear()
        super().teardown(stage)
