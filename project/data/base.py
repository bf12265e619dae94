"""`ClassificationDataModule`: everything a classification DataModule shares, for images or vectors.

A dataset subclasses it, declares what its samples look like and says where they come from. This
example runs as written (tests/test_vector_data.py runs it)::

    import torch
    from project.data import ClassificationDataModule

    class MyData(ClassificationDataModule):
        class_names = ["cat", "dog"]   # label i is class_names[i]
        input_shape = (3, 16, 16)      # one sample: (C, H, W) for an image; (13,) for 13 features

        def load_pool(self):           # the train+val pool: inputs (N, *input_shape), labels (N,)
            return torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8), torch.arange(40) % 2

        def load_test(self):           # the test split, or leave it out when there is none
            return torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8), torch.arange(10) % 2

    data = MyData(batch_size=8)
    data.setup("fit")                 # seeded train/val split; mean/std computed from the train split
    batch = next(iter(data.train_dataloader()))
    assert batch.image.shape == (8, 3, 16, 16)

The contract, checked when the DataModule is created (a missing piece is one line naming it):

- `class_names` (required): the class names, in label order.
- `input_shape` (required): the shape of one sample as the model receives it (the model's
  `in_shape` is linked from it). Three dimensions, (channels, height, width), make an image: uint8
  pixels are scaled to 0..1, statistics are per channel, and `augmentation()` and the device loader
  apply. Any other shape is a feature vector, e.g. (13,) for 13 tabular columns, or (time, features):
  statistics are per entry of the last dimension, values are used as they are (no 0..1 scaling), and
  there is no augmentation or device loader. `image_shape` is the older name, still accepted.
- `mean` and `std` (optional, both or neither): the normalization, inputs become (x - mean) / std,
  one value per channel (images, in the 0..1 scale) or per feature. Left out, they are computed at
  `setup` from the training split of `load_pool()` (the whole split, even with `dev_subset`, so a
  debug run normalizes as the full one does), and `test`/`predict` compute the same values from the
  same split; a constant feature gets std 1. Declare them when computing them would be slow (a large
  pool) or to pin published values (CIFAR-10's).

and optionally `prepare_data` (download) and `augmentation()` (a random crop and flip of training
images). The base does the rest: a seeded train/val split (random, or one of `folds` stratified folds)
saved to the run directory (`split.json`) or read from `split_file`, a tiny `dev_subset` for CPU
debugging, and loaders that yield `Example`s (the input in their `image` field, whatever its shape):
torch DataLoaders, or with `device_loader` the splits held on the training device and batched there
(`project/data/device_loader.py`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from project.data.dataset import ImageDataset
from project.data.device_augment import Augmentation
from project.data.device_loader import DeviceBatches, to_device
from project.data.resumable import EpochSampler, SeededSamples, TrainPosition, train_position
from project.data.split import Split, check_fold
from project.errors import UserError
from project.structs import Example

SPLIT_FILENAME = "split.json"
# What a subclass must declare, with an example for the error message.
REQUIRED = {
    "class_names": "class_names = ['cat', 'dog']",
    "input_shape": "input_shape = (13,) or (3, 32, 32)",
}
STATISTICS_CHUNK = 4096  # samples at a time: statistics of a large pool without a float64 copy of it


def input_statistics(
    inputs: Tensor, indices: Sequence[int], image: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation of `inputs[indices]` per channel of (N, C, H, W) images (uint8
    pixels scaled to 0..1, as `ToDtype(scale=True)` does) or per entry of the last dimension of
    vectors (values as they are). A constant feature gets std 1: centred to 0 rather than divided by 0."""
    chosen = torch.as_tensor(indices, dtype=torch.long)
    if len(chosen) == 0:
        raise UserError("cannot compute mean and std from an empty training split: lower val_fraction")

    width = inputs.shape[1] if image else inputs.shape[-1]
    count = len(chosen) * (inputs[0].numel() // width)  # values per channel or feature

    def chunks() -> Iterator[Tensor]:  # (values, channels or features), float64
        for start in range(0, len(chosen), STATISTICS_CHUNK):
            x = inputs[chosen[start : start + STATISTICS_CHUNK]].double()
            if image and inputs.dtype == torch.uint8:
                x /= 255.0
            yield (x.movedim(1, -1) if image else x).reshape(-1, width)

    total = torch.zeros(width, dtype=torch.float64)
    for x in chunks():
        total += x.sum(0)
    mean = total / count
    squares = torch.zeros(width, dtype=torch.float64)
    for x in chunks():  # a second pass: exact where sum(x^2) - n * mean^2 would cancel
        squares += ((x - mean) ** 2).sum(0)
    std = (squares / count).sqrt()
    std[std == 0] = 1.0
    return tuple(mean.tolist()), tuple(std.tolist())


class Standardize:
    """(x - mean) / std per entry of the last dimension, as float32: the normalization of vector
    inputs (torchvision's Normalize wants images). A class, so DataLoader workers can pickle it."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __call__(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std


class ClassificationDataModule(pl.LightningDataModule):
    """The samples of a classification task, split, normalized and batched as `Example`s."""

    dataset_class: ClassVar[type[ImageDataset]] = ImageDataset
    """Builds every split's dataset; a subclass returning richer Examples can be set here."""
    class_names: list[str]
    """The class names, in label order (label i is class_names[i])."""
    input_shape: tuple[int, ...]
    """One sample as the model receives it: (channels, height, width) for an image, (features,) for a
    vector. The model's `in_shape` is linked from it."""
    image_shape: tuple[int, ...]
    """The older name of `input_shape`: a subclass may declare either, both then hold the value."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Normalization, per channel (images, 0..1 scale) or per feature; computed from the training
    split at `setup` when a subclass declares neither."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Datasets written before `input_shape` existed declare `image_shape`; the CLI links either.
        own = vars(cls)
        if "input_shape" in own:
            cls.image_shape = own["input_shape"]
        elif "image_shape" in own:
            cls.input_shape = own["image_shape"]

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
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
        folds: int | None = None,
        fold: int | None = None,
    ) -> None:
        """
        Args:
            batch_size: samples per batch on each device (under DDP the global batch is this x devices).
            eval_batch_size: samples per validation, test and prediction batch on each device; None: the
                same as batch_size. Evaluation keeps no activations for a backward pass, so larger batches
                fit, and each evaluation takes fewer steps (each step costs Lightning and the callbacks
                time of their own). Results do not depend on it (eval mode: no batch statistics).
            val_fraction: share of the training pool held out for validation (ignored with `folds`).
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
            shuffle_seed: seed of the training split's per-epoch order and augmentation (both
                loaders; see data/resumable.py); None: the run's `seed_everything`, else `seed`.
            folds: k-fold cross-validation: split the pool into this many stratified folds (seeded by
                `seed`; each class spread over the folds as evenly as it can be), one of which is the
                validation split and the others the training split, in place of `val_fraction`.
                `python -m project cv --folds K` trains every fold.
            fold: with `folds`, which fold (0..folds-1) is the validation split.
        """
        super().__init__()
        self._check_declared()
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise UserError(f"eval_batch_size must be at least 1 (null: batch_size), got {eval_batch_size}")
        if dev_subset is not None and dev_subset < 1:
            raise UserError(f"dev_subset must be a positive number of samples, got {dev_subset}")
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        check_fold(folds, fold)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.folds, self.fold = folds, fold
        self.split_file = split_file
        self.dev_subset = dev_subset
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.device_loader = device_loader
        self.channels_last = channels_last
        self._shuffle_seed = shuffle_seed
        # Where the first training epoch of a resumed run starts (data/resumable.py), used once.
        self._resume: TrainPosition | None = None
        self.split: Split | None = None
        self.datasets: dict[str, ImageDataset] = {}
        # split -> (images, labels, indices) on the device, so a reloaded loader copies nothing again.
        self._on_device: dict[str, tuple[Tensor, Tensor | None, Tensor]] = {}
        if device_loader:
            self._check_device_loader()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_image(self) -> bool:
        """Whether samples are (channels, height, width) images, rather than feature vectors."""
        return len(self.input_shape) == 3

    # ---- what a dataset provides ---------------------------------------------------------------

    def load_pool(self) -> tuple[Tensor, Tensor]:
        """The samples that are split into train and val: inputs (N, *input_shape) and labels (N,).
        Images are uint8 (0..255) or float (0..1); vectors any number type, used as they are."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_pool() -> (inputs, labels)")

    def load_test(self) -> tuple[Tensor, Tensor] | None:
        """The held-out test samples, or None if the dataset has no test split."""
        return None

    def augmentation(self) -> Augmentation | None:
        """How training images are augmented, by the DataLoader and the device loader alike; None: not."""
        return None

    def train_transform(self) -> Callable[[Tensor], Tensor]:
        augmentation = self.augmentation()
        if augmentation is None:
            return self.eval_transform()
        if not self.is_image:
            raise UserError(
                f"{type(self).__name__}.augmentation() crops and flips images, but its inputs have shape "
                f"{tuple(self.input_shape)}: return None from augmentation() for vector inputs"
            )
        return v2.Compose(
            [*augmentation.transforms((self.input_shape[1], self.input_shape[2])), self.eval_transform()]
        )

    def eval_transform(self) -> Callable[[Tensor], Tensor]:
        if self.is_image:
            return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])
        return Standardize(self.mean, self.std)

    # ---- the contract --------------------------------------------------------------------------

    def _check_declared(self) -> None:
        name = type(self).__name__
        for attribute, example in REQUIRED.items():
            if not hasattr(self, attribute):
                raise UserError(
                    f"{name} does not declare {attribute}: add a class attribute such as {example}"
                )
        if hasattr(self, "mean") != hasattr(self, "std"):
            given, missing = ("mean", "std") if hasattr(self, "mean") else ("std", "mean")
            raise UserError(
                f"{name} declares {given} but not {missing}: declare both, or neither to have them "
                f"computed from the training split"
            )
        shape = tuple(self.input_shape)
        if not shape or not all(isinstance(size, int) and size > 0 for size in shape):
            raise UserError(
                f"{name}.input_shape must be a tuple of positive sizes such as (13,), got {shape}"
            )
        width = shape[0] if self.is_image else shape[-1]
        for attribute in ("mean", "std"):
            values = getattr(self, attribute, None)
            if values is not None and len(values) != width:
                raise UserError(
                    f"{name}.{attribute} has {len(values)} values, but its inputs of shape {shape} have "
                    f"{width} {'channels' if self.is_image else 'features'}: one value per "
                    f"{'channel' if self.is_image else 'feature'}, or leave mean and std out"
                )

    def _ensure_statistics(self, inputs: Tensor, train: list[int]) -> None:
        if not hasattr(self, "mean"):
            self.mean, self.std = input_statistics(inputs, train, image=self.is_image)

    # ---- shared machinery ----------------------------------------------------------------------

    def _check_device_loader(self) -> None:
        if not self.is_image:
            raise UserError(
                f"the device loader batches images (C, H, W), but {type(self).__name__}'s inputs have shape "
                f"{tuple(self.input_shape)}: set data.init_args.device_loader to false"
            )
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

    def _make_split(self, labels: Tensor) -> Split:
        """The train/val split of a pool with these labels: split_file's, a k-fold one, or a random one."""
        if self.split_file is not None:
            split = Split.load(Path(self.split_file), len(labels))
            if self.folds is not None and (split.folds, split.fold) != (self.folds, self.fold):
                held = "no k-fold split" if split.folds is None else f"fold {split.fold} of {split.folds}"
                raise UserError(
                    f"split_file {self.split_file} holds {held}, but data.init_args.folds/fold ask for fold "
                    f"{self.fold} of {self.folds}: drop split_file, or folds and fold"
                )
            return split
        if self.folds is not None and self.fold is not None:
            return Split.kfold(labels, self.folds, self.fold, self.seed)
        return Split.random(len(labels), self.val_fraction, self.seed)

    def _subset(self, indices: list[int]) -> list[int]:
        return indices if self.dev_subset is None else indices[: self.dev_subset]

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            inputs, labels = self.load_pool()
            self.split = self._make_split(labels)
            run_dir = self._run_dir()
            if run_dir is not None and self.trainer is not None and self.trainer.is_global_zero:
                self.split.save(run_dir / SPLIT_FILENAME)
            self._ensure_statistics(inputs, self.split.train)
            make = self.dataset_class
            self.datasets["train"] = make(
                inputs, labels, self._subset(self.split.train), self.train_transform()
            )
            self.datasets["val"] = make(inputs, labels, self._subset(self.split.val), self.eval_transform())
        if stage in ("test", "predict") and "test" not in self.datasets:
            test = self.load_test()
            if test is None:
                raise UserError(f"{type(self).__name__} has no test split to {stage} on")
            if not hasattr(self, "mean"):  # a test-only run: the statistics of the same training split
                pool, pool_labels = self.load_pool()
                self._ensure_statistics(pool, self._make_split(pool_labels).train)
            inputs, labels = test
            indices = self._subset(list(range(len(inputs))))
            self.datasets["test"] = self.dataset_class(inputs, labels, indices, self.eval_transform())
            # Prediction sees the same inputs without their labels, as real unlabelled data would be.
            self.datasets["predict"] = self.dataset_class(inputs, None, indices, self.eval_transform())

    @property
    def has_test_split(self) -> bool:
        return type(self).load_test is not ClassificationDataModule.load_test

    def _dataset(self, split: str) -> ImageDataset:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} loader")
        return self.datasets[split]

    def _loader(self, split: str) -> DataLoader[Example] | DeviceBatches:
        return self._device_batches(split) if self.device_loader else self._dataloader(split)

    @property
    def shuffle_seed(self) -> int:
        if self._shuffle_seed is not None:
            return self._shuffle_seed
        return int(os.environ.get("PL_GLOBAL_SEED", self.seed))  # set by seed_everything

    def state_dict(self) -> dict[str, Any]:
        # In every checkpoint: where training goes on, so that a mid-epoch checkpoint resumes exactly.
        position = train_position(self.trainer) if self.trainer is not None else None
        return {} if position is None else {"train_position": position._asdict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = TrainPosition.from_state(state_dict.get("train_position"))
        if self._resume is not None and self._resume.batch > 0:
            # Lightning warns that a mid-epoch resume is unreliable unless the loader has a
            # state_dict of its own; this one resumes through the DataModule instead (see resumable.py).
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")

    def _take_resume(self) -> TrainPosition | None:
        position, self._resume = self._resume, None
        return position

    def _dataloader(self, split: str) -> DataLoader[Example]:
        dataset: Dataset[Example] = self._dataset(split)
        sampler: Sampler[Any] | None = None
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if split == "train":
            augment = self.augmentation() is not None
            sampler = EpochSampler(
                dataset,
                batch_size=self.batch_size,
                seed=self.shuffle_seed,
                augment=augment,
                resume=self._take_resume,
                num_replicas=world_size,
                rank=rank,
            )
            dataset = SeededSamples(dataset) if augment else dataset
        elif trainer is not None and world_size > 1:
            # Lightning's default DistributedSampler pads shards by repeating samples, which would count
            # them twice in metrics and confusion matrices. Evaluation has no per-step collective
            # (metrics sync at epoch end), so shards may differ in length by one instead.
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self._batch_size(split),
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=Example.collate,
            # Each new iterator draws its workers' base seed from this generator, not the global one:
            # a loader never shifts the stream dropout draws from, so a run resumed mid-epoch, whose
            # train iterator starts at a different moment, draws the same dropout masks.
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def _batch_size(self, split: str) -> int:
        # Read at each loader's creation: Lightning's batch-size finder changes `batch_size` between trials.
        if split == "train" or self.eval_batch_size is None:
            return self.batch_size
        return self.eval_batch_size

    def _device_batches(self, split: str) -> DeviceBatches:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        copy = self._on_device.get(split)
        if copy is None or copy[0].device != device:
            copy = self._on_device[split] = to_device(self._dataset(split), device)
        train = split == "train"
        return DeviceBatches(
            *copy,
            self._batch_size(split),
            self.mean,
            self.std,
            shuffle=train,
            augmentation=self.augmentation() if train else None,
            channels_last=self.channels_last,
            seed=self.shuffle_seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
            resume=self._take_resume if train else None,
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
