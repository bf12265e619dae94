"""DataModules. Each yields `Example` batches and tells the model its `num_classes` and `image_shape`.

Add a dataset: subclass `ClassificationDataModule` in a new file (see its docstring), export it
below, and point a config at it (`data.class_path: project.data.MyData`).
"""

from project.data.base import ClassificationDataModule
from project.data.cifar10 import CIFAR10DataModule
from project.data.digits import DigitsDataModule
from project.data.gpu_cifar10 import DeviceCIFAR10DataModule
from project.data.split import Split

__all__ = [
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DeviceCIFAR10DataModule",
    "DigitsDataModule",
    "Split",
]
