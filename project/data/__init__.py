"""DataModules. Each yields `Example` batches and tells the model its `num_classes` and `image_shape`.

base.py: `ClassificationDataModule`, what every dataset shares (split, dev subset, loaders);
cifar10.py, digits.py: the datasets; dataset.py: `ImageDataset`, an in-memory split;
split.py: seeded train/val splits saved as JSON; device_loader.py + device_augment.py: batches made,
augmented and normalized on the training device (`device_loader: true`); fake_cifar10.py: a small
generated CIFAR-10 in the real on-disk format, for tests and benchmarks.
"""

from project.data.base import ClassificationDataModule
from project.data.cifar10 import CIFAR10DataModule
from project.data.device_augment import Augmentation
from project.data.digits import DigitsDataModule
from project.data.split import Split

__all__ = [
    "Augmentation",
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "Split",
]
