"""`Example`: one batch of model inputs.

Datasets return one unbatched `Example` per sample; `Example.collate` stacks them for a DataLoader::

    loader = DataLoader(dataset, batch_size=32, collate_fn=Example.collate)
    batch = next(iter(loader))          # Example(image=(32, C, H, W), label=(32,), index=(32,))

Lightning moves the dataclass to the right device as it is: its fields are tensors, which
`lightning_utilities.apply_to_collection` walks. Add fields here, or in a subclass (masks, extra
targets, ...), and `collate` stacks them too; a field that is `None` in any sample is `None` in the
batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

E = TypeVar("E", bound="Example")


@dataclass
class Example:
    image: Tensor
    """(B, *input_shape) float, normalized: (B, C, H, W) images, (B, features) vectors; a single
    sample has no B."""
    label: Tensor | None = None
    """(B,) int64 class indices; `None` when labels are unknown (prediction)."""
    index: Tensor | None = None
    """(B,) int64 position of each sample in its dataset, so callbacks can find it again."""

    def __len__(self) -> int:
        return self.image.shape[0]

    @staticmethod
    def collate(samples: Sequence[E]) -> E:
        """Stack single-sample Examples into a batch (the DataLoader `collate_fn`). The batch has the
        samples' own class, so a subclass with extra fields needs no collate of its own."""
        if not samples:
            raise ValueError("Example.collate got no samples")
        kind = type(samples[0])
        stacked: dict[str, Any] = {}
        for field in dataclasses.fields(kind):
            values = [getattr(sample, field.name) for sample in samples]
            stacked[field.name] = None if any(v is None for v in values) else torch.stack(values)
        return kind(**stacked)

    def pin_memory(self) -> Example:
        """Called by DataLoader(pin_memory=True): pin every tensor field for async host-to-GPU copies."""
        return dataclasses.replace(
            self,
            **{
                f.name: value.pin_memory()
                for f in dataclasses.fields(self)
                if isinstance(value := getattr(self, f.name), Tensor)
            },
        )

    def require_label(self) -> Tensor:
        """The labels, or a clear error when this batch has none (e.g. a prediction batch)."""
        if self.label is None:
            raise ValueError("this Example has no labels; losses and metrics need labelled batches")
        return self.label
