"""DataModules. Each yields `Example` batches and tells the model its `num_classes` and `input_shape`.

base.py: `ClassificationDataModule`, what every dataset shares (the contract for image and vector
inputs, split, dev subset, normalization, loaders); bundled.py: `BundledDataModule`, a dataset held
whole in memory with a fixed test split; cifar10.py, digits.py (images), wine.py (feature vectors):
the datasets; dataset.py: `ImageDataset`, an in-memory split; split.py: seeded train/val splits saved
as JSON; device_loader.py + device_augment.py: image batches made, augmented and normalized on the
training device (`device_loader: true`); fake_cifar10.py: a small generated CIFAR-10 in the real
on-disk format, for tests and benchmarks.
"""

from project.data.base import ClassificationDataModule
from project.data.bundled import BundledDataModule
from project.data.cifar10 import CIFAR10DataModule
from project.data.device_augment import Augmentation
from project.data.digits import DigitsDataModule
from project.data.split import Split
from project.data.wine import WineDataModule

__all__ = [
    "Augmentation",
    "BundledDataModule",
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "Split",
    "WineDataModule",
]
