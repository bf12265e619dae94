"""`DigitsDataModule`: scikit-learn's bundled handwritten digits, 1797 real 8x8 grey images, 10 classes.

Ships inside scikit-learn, so it needs no download: the offline demo and the test dataset.
A fixed, seeded 20 % test split is held out first (the same for every run); the rest is split into
train/val by `seed` like any other dataset. Training images are not augmented: a mirrored digit
would be another symbol.

    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")   # ~1150 train / ~290 val images; dm.setup("test") -> 360 test images
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from project.data.base import ClassificationDataModule

TEST_SPLIT_SEED = 20_240_917
TEST_FRACTION = 0.2


class DigitsDataModule(ClassificationDataModule):
    class_names = [str(d) for d in range(10)]
    image_shape = (1, 8, 8)
    mean = (0.3053,)
    std = (0.3760,)

    def __init__(self, val_fraction: float = 0.2, **kwargs: Any) -> None:
        """
        Args:
            val_fraction: share of the non-test images held out for validation.
            **kwargs: batch size, split, dev subset and loader settings, see `ClassificationDataModule`.
        """
        super().__init__(val_fraction=val_fraction, **kwargs)
        self._all: tuple[Tensor, Tensor, Tensor] | None = None

    def _load(self) -> tuple[Tensor, Tensor, Tensor]:
        """All images (float 0..1), labels, and a fixed permutation whose head is the test split."""
        if self._all is None:
            from sklearn.datasets import load_digits  # scikit-learn is slow to import; only when used

            digits = load_digits()
            images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
            labels = torch.as_tensor(digits.target, dtype=torch.long)
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
            self._all = images, labels, order
        return self._all

    def _part(self, test: bool) -> tuple[Tensor, Tensor]:
        images, labels, order = self._load()
        num_test = round(len(images) * TEST_FRACTION)
        chosen = order[:num_test] if test else order[num_test:]
        chosen = chosen.sort().values
        return images[chosen], labels[chosen]

    def load_pool(self) -> tuple[Tensor, Tensor]:
        return self._part(test=False)

    def load_test(self) -> tuple[Tensor, Tensor]:
        return self._part(test=True)
