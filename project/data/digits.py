"""`DigitsDataModule`: scikit-learn's bundled handwritten digits, 1797 real 8x8 grey images, 10 classes.

Ships inside scikit-learn, so it needs no download: the offline demo and the test dataset.
A fixed, seeded 20 % test split is held out first (the same for every run, `BundledDataModule`);
the rest is split into train/val by `seed` like any other dataset. Training images are not
augmented: a mirrored digit would be another symbol.

    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")   # ~1150 train / ~290 val images; dm.setup("test") -> 360 test images
"""

from __future__ import annotations

import torch
from torch import Tensor

from project.data.bundled import BundledDataModule


class DigitsDataModule(BundledDataModule):
    class_names = [str(d) for d in range(10)]
    input_shape = (1, 8, 8)
    mean = (0.3053,)  # declared, not computed: the values every earlier run and checkpoint used
    std = (0.3760,)

    def load_all(self) -> tuple[Tensor, Tensor]:
        """All images (float 0..1) and labels."""
        from sklearn.datasets import load_digits  # scikit-learn is slow to import; only when used

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        return images, torch.as_tensor(digits.target, dtype=torch.long)
