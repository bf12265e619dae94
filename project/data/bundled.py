"""`BundledDataModule`: a small dataset loaded whole into memory, with a fixed, seeded test split.

For scikit-learn's bundled datasets (digits, wine), which come as one labelled set: a fixed 20 % is
held out as the test split first, the same for every run; the rest is the pool that `seed` splits
into train and val like any other dataset. A subclass implements `load_all()`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from project.data.base import ClassificationDataModule

TEST_SPLIT_SEED = 20_240_917
TEST_FRACTION = 0.2


class BundledDataModule(ClassificationDataModule):
    def __init__(self, val_fraction: float = 0.2, **kwargs: Any) -> None:
        """
        Args:
            val_fraction: share of the non-test samples held out for validation.
            **kwargs: batch size, split, dev subset and loader settings, see `ClassificationDataModule`.
        """
        super().__init__(val_fraction=val_fraction, **kwargs)
        self._all: tuple[Tensor, Tensor, Tensor] | None = None

    def load_all(self) -> tuple[Tensor, Tensor]:
        """Every sample: inputs (N, *input_shape) and labels (N,)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_all() -> (inputs, labels)")

    def _load(self) -> tuple[Tensor, Tensor, Tensor]:
        """All inputs, labels, and a fixed permutation whose head is the test split (loaded once)."""
        if self._all is None:
            inputs, labels = self.load_all()
            order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
            self._all = inputs, labels, order
        return self._all

    def _part(self, test: bool) -> tuple[Tensor, Tensor]:
        inputs, labels, order = self._load()
        num_test = round(len(inputs) * TEST_FRACTION)
        chosen = order[:num_test] if test else order[num_test:]
        chosen = chosen.sort().values
        return inputs[chosen], labels[chosen]

    def load_pool(self) -> tuple[Tensor, Tensor]:
        return self._part(test=False)

    def load_test(self) -> tuple[Tensor, Tensor]:
        return self._part(test=True)
