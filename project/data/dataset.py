"""`ImageDataset`: an in-memory tensor of inputs seen through a list of indices, yielding `Example`s.

    ds = ImageDataset(images, labels, indices=split.val, transform=eval_transform)
    ds[0]   # Example(image=(C, H, W) float, label=(), index=())

The inputs need not be images: (N, 13) feature vectors give Examples whose `image` is a (13,)
vector. `index` is the sample's position in `images`, so callbacks can find it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from project.structs import Example


class ImageDataset(Dataset[Example]):
    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        indices: Sequence[int] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """
        Args:
            images: (N, C, H, W), uint8 (0..255) or float (0..1); or any (N, ...) inputs, e.g. vectors.
            labels: (N,) int64, or None to yield unlabelled Examples (prediction).
            indices: which of the N samples this dataset holds (default: all), in order.
            transform: applied to each sample (a (C, H, W) image, a vector, ...).
        """
        self.images = images
        self.labels = labels
        self.indices = torch.as_tensor(range(len(images)) if indices is None else indices, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Example:
        index = self.indices[i]
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        label = None if self.labels is None else self.labels[index]
        return Example(image=image, label=label, index=index)
