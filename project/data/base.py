"""`ClassificationDataModule`: everything an image-classification DataModule shares.

A dataset subclasses it and says where its images come from::

    class MyData(ClassificationDataModule):
        class_names = ["cat", "dog"]
        image_shape = (3, 64, 64)
        def load_pool(self):  return images, labels    # the train+val pool, (N, C, H, W), (N,)
        def load_test(self):  return images, labels    # or None when there is no test split

and optionally `prepare_data` (download), `train_transform`/`eval_transform` (augmentation).
The base does the rest: a seeded train/val split saved to the run directory (`split.json`) or read
from `split_file`, a tiny `dev_subset` for CPU debugging, and DataLoaders that yield `Example`s.
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
        self.split: Split | None = None
        self.datasets: dict[str, ImageDataset] = {}

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

    def train_transform(self) -> v2.Transform:
        return self.eval_transform()

    def eval_transform(self) -> v2.Transform:
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    # ---- shared machinery ----------------------------------------------------------------------

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

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[Example]:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} DataLoader")
        dataset = self.datasets[split]
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
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=Example.collate,
        )

    def train_dataloader(self) -> DataLoader[Example]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Example]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Example]:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader[Example]:
        return self._loader("predict")
