"""`DigitsDataModule`: scikit-learn's bundled handwritten digits, 1797 real 8x8 grey images, 10 classes.

Ships inside scikit-learn, so it needs no download: the offline demo and the test dataset. (Read from
scikit-learn's file without importing scikit-learn: `digits_table`.)
A fixed, seeded 20 % test split is held out first (the same for every run, `BundledDataModule`);
the rest is split into train/val by `seed` like any other dataset. Training images are not
augmented: a mirrored digit would be another symbol.

    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")   # ~1150 train / ~290 val images; dm.setup("test") -> 360 test images
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
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
        table = torch.as_tensor(digits_table())
        images = table[:, :-1].float().div_(16.0).reshape(-1, 1, 8, 8)
        return images, table[:, -1].long()


def digits_table() -> np.ndarray:
    """scikit-learn's digits.csv.gz, one row per image: 64 pixels (0..16), then the label. Read as its
    `load_digits` reads it, without importing scikit-learn (~0.3 s of every digits run), which this file
    needs none of; through `load_digits` where the file is not at its usual place."""
    spec = importlib.util.find_spec("sklearn")
    folders = spec.submodule_search_locations if spec is not None else None
    path = Path(folders[0], "datasets", "data", "digits.csv.gz") if folders else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return np.column_stack([digits.data, digits.target])
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",")
