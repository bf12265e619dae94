"""`WineDataModule`: scikit-learn's bundled wine recognition data, a vector-input (tabular) dataset.

178 wines from three cultivars, 13 chemical measurements each (alcohol, malic acid, ..., proline),
so each sample is a (13,) feature vector, not an image. Bundled with scikit-learn: no download.
No `mean`/`std` declared: the base computes them per feature from the training split, so columns
measured in units ~1000 apart (proline vs. hue) reach the model on one scale. The same fixed 20 %
test split as digits (`BundledDataModule`); the rest is split into train/val by `seed`.

    dm = WineDataModule(batch_size=32)
    dm.setup("fit")   # 114 train / 28 val vectors of shape (13,); dm.setup("test") -> 36
"""

from __future__ import annotations

import torch
from torch import Tensor

from project.data.bundled import BundledDataModule


class WineDataModule(BundledDataModule):
    class_names = ["cultivar 0", "cultivar 1", "cultivar 2"]
    input_shape = (13,)

    def load_all(self) -> tuple[Tensor, Tensor]:
        """All measurements (float32, in their own units) and labels."""
        from sklearn.datasets import load_wine  # scikit-learn is slow to import; only when used

        wine = load_wine()
        return torch.as_tensor(wine.data, dtype=torch.float32), torch.as_tensor(wine.target, dtype=torch.long)
