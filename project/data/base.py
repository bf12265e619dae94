"""`ClassificationDataModule`: everything an image-classification DataModule shares.

A dataset subclasses it and says where its images come from::

    class MyData(ClassificationDataModule):
        class_names = ["cat", "dog"]
        image_shape = (3, 64, 64)
        def load_pool(self):  return images, labels    # the train+val pool, (N, C, H, W), (N,)
        def load_test(self):  return images, labels    # or None when there is no test split

and optionally `prepare_data` (download) and `augmentation()` (a random crop and flip of training
images). The base does the rest: a seeded train/val split saved to the run directory (`split.json`)
or read from `split_file`, a tiny `dev_subset` for CPU debugging, and loaders that yield `Example`s:
torch DataLoaders, or with `device_loader` the splits held on the training device and batched there
(`project/data/device_loader.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from project.data.dataset import ImageDataset
from project.data.device_augment import Augmentation
from project.data.device_loader import DeviceBatches, to_device
from project.data.split import Split
from project.errors import UserError
from project.structs import Example

SPLIT_FILENAME = "split.json"


class ClassificationDataModule(pl.LightningDataModule):
    dataset_class: ClassVar[type[ImageDataset]] = ImageDataset
    """Builds every split's dataset; a subclass returning richer Examples can be set here."""
    class_names: ClassVar[list[str]]
    image_shape: ClassVar[tuple[int, int, int]]
    """(channels, height, width) of the images the model receives."""
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    """Per-channel statistics of the training images in 0..1 scale, for normalization."""

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 42,
        split_file: str | None = None,
        dev_subset: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        device_loader: bool = False,
        channels_last: bool = False,
        shuffle_seed: int | None = None,
    ) -> None:
        """
        Args:
            batch_size: samples per batch on each device (under DDP the global batch is this x devices).
            val_fraction: share of the training pool held out for validation.
            seed: seed of the train/val split (independent of `seed_everything`).
            split_file: a `split.json` from an earlier run to reuse its exact train/val partition.
            dev_subset: keep only the first N samples of every split: a tiny set for CPU debugging.
            num_workers: DataLoader worker processes (0 loads in the main process).
            pin_memory: page-locked batches for faster GPU copies; None = on when CUDA is available.
            persistent_workers: keep workers alive between epochs (when num_workers > 0).
            device_loader: copy the train, val and test splits to the training device once, and
                shuffle, augment and normalize every batch there; the DataLoader settings above
                then apply to prediction only. The same examples, augmented by the same
                `augmentation()`, as the DataLoaders.
            channels_last: with device_loader, batches in channels_last memory format (NHWC), which
                tensor-core convolutions prefer; pair it with the model's own `channels_last`.
            shuffle_seed: with device_loader, seed of the per-epoch shuffle and augmentation;
                None: `seed`. (The DataLoaders shuffle from the global seed, `seed_everything`.)
        """
        super().__init__()
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if dev_subset is not None and dev_subset < 1:
            raise UserError(f"dev_subset must be a positive number of samples, got {dev_subset}")
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.split_file = split_file
        self.dev_subset = dev_subset
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.device_loader = device_loader
        self.channels_last = channels_last
        self.shuffle_seed = seed if shuffle_seed is None else shuffle_seed
        self.split: Split | None = None
        self.datasets: dict[str, ImageDataset] = {}
        # split -> (images, labels, indices) on the device, so a reloaded loader copies nothing again.
        self._on_device: dict[str, tuple[Tensor, Tensor | None, Tensor]] = {}
        if device_loader:
            self._check_device_loader()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---- what a dataset provides ---------------------------------------------------------------

    def load_pool(self) -> tuple[Tensor, Tensor]:
        """The samples that are split into train and val: images (N, C, H, W) and labels (N,)."""
        raise NotImplementedError

    def load_test(self) -> tuple[Tensor, Tensor] | None:
        """The held-out test samples, or None if the dataset has no test split."""
        return None

    def augmentation(self) -> Augmentation | None:
        """How training images are augmented, by the DataLoader and the device loader alike; None: not."""
        return None

    def train_transform(self) -> v2.Transform:
        augmentation = self.augmentation()
        if augmentation is None:
            return self.eval_transform()
        return v2.Compose([*augmentation.transforms(self.image_shape[1:]), self.eval_transform()])

    def eval_transform(self) -> v2.Transform:
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    # ---- shared machinery ----------------------------------------------------------------------

    def _check_device_loader(self) -> None:
        # The device loader runs `augmentation()` and a normalization by `mean`/`std` on plain
        # Examples; anything else a subclass customizes would be silently left out.
        own = ("train_transform", "eval_transform", "dataset_class")
        custom = [
            name for name in own if getattr(type(self), name) is not getattr(ClassificationDataModule, name)
        ]
        if custom:
            raise UserError(
                f"{type(self).__name__} has its own {' and '.join(custom)}, which the device loader cannot "
                f"run; set data.init_args.device_loader to false"
            )

    def _run_dir(self) -> Path | None:
        return Path(self.trainer.default_root_dir) if self.trainer is not None else None

    def _make_split(self, num_samples: int) -> Split:
        if self.split_file is not None:
            return Split.load(Path(self.split_file), num_samples)
        return Split.random(num_samples, self.val_fraction, self.seed)

    def _subset(self, indices: list[int]) -> list[int]:
        return indices if self.dev_subset is None else indices[: self.dev_subset]

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            images, labels = self.load_pool()
            self.split = self._make_split(len(images))
            run_dir = self._run_dir()
            if run_dir is not None and self.trainer is not None and self.trainer.is_global_zero:
                self.split.save(run_dir / SPLIT_FILENAME)
            make = self.dataset_class
            self.datasets["train"] = make(
                images, labels, self._subset(self.split.train), self.train_transform()
            )
            self.datasets["val"] = make(images, labels, self._subset(self.split.val), self.eval_transform())
        if stage in ("test", "predict") and "test" not in self.datasets:
            test = self.load_test()
            if test is None:
                raise UserError(f"{type(self).__name__} has no test split to {stage} on")
            images, labels = test
            indices = self._subset(list(range(len(images))))
            self.datasets["test"] = self.dataset_class(images, labels, indices, self.eval_transform())
            # Prediction sees the same images without their labels, as real unlabelled data would be.
            self.datasets["predict"] = self.dataset_class(images, None, indices, self.eval_transform())

    @property
    def has_test_split(self) -> bool:
        return type(self).load_test is not ClassificationDataModule.load_test

    def _dataset(self, split: str) -> ImageDataset:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} loader")
        return self.datasets[split]

    def _loader(self, split: str) -> DataLoader[Example] | DeviceBatches:
        return self._device_batches(split) if self.device_loader else self._dataloader(split)

    def _dataloader(self, split: str) -> DataLoader[Example]:
        dataset = self._dataset(split)
        sampler = None
        if split != "train" and self.trainer is not None and self.trainer.world_size > 1:
            # Lightning's default DistributedSampler pads shards by repeating samples, which would count
            # them twice in metrics and confusion matrices. Evaluation has no per-step collective
            # (metrics sync at epoch end), so shards may differ in length by one instead.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=split == "train",
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=Example.collate,
        )

    def _device_batches(self, split: str) -> DeviceBatches:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        copy = self._on_device.get(split)
        if copy is None or copy[0].device != device:
            copy = self._on_device[split] = to_device(self._dataset(split), device)
        train = split == "train"
        return DeviceBatches(
            *copy,
            self.batch_size,
            self.mean,
            self.std,
            shuffle=train,
            augmentation=self.augmentation() if train else None,
            channels_last=self.channels_last,
            seed=self.shuffle_seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
        )

    def train_dataloader(self) -> DataLoader[Example] | DeviceBatches:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader[Example] | DeviceBatches:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Example] | DeviceBatches:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader[Example]:
        # A DataLoader even with device_loader: prediction is no hot path, and Lightning's
        # prediction writers expect one.
        return self._dataloader("predict")

    def teardown(self, stage: str) -> None:
        # Frees the device memory between fit and the test that follows it (each copies its own split).
        self._on_device.clear()
        super().teardown(stage)
