"""Turning model inputs back into pictures (images) or text (feature vectors) for the visual callbacks."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.nn import functional as F

MIN_DISPLAY_SIZE = 64  # px: smaller images (8x8 digits) are enlarged, pixel for pixel, to be seen
MAX_SHOWN_FEATURES = 32  # values written per sample; a longer vector ends in "..."


def num_classes(pl_module: pl.LightningModule) -> int:
    value = getattr(pl_module, "num_classes", None)
    if not isinstance(value, int):
        raise TypeError(
            f"{type(pl_module).__name__} needs an int `num_classes` attribute (BaseModel has one)"
        )
    return value


def class_names(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
    """The DataModule's class names, or "0", "1", ... when it has none."""
    names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
    if names:
        return list(names)
    return [str(i) for i in range(num_classes(pl_module))]


def are_images(inputs: Tensor) -> bool:
    """Whether a batch of model inputs is (N, C, H, W) images, as a DataModule's `is_image` says of
    one sample; anything else ((N, features), ...) is shown as text, not pictures."""
    return inputs.ndim == 4


def _statistics(trainer: pl.Trainer) -> tuple[list[float] | None, list[float] | None]:
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "mean", None), getattr(datamodule, "std", None)


def display_images(images: Tensor, trainer: pl.Trainer) -> list[np.ndarray]:
    """Normalized (N, C, H, W) model inputs -> uint8 images as they looked before normalization:
    (H, W, 3) for colour, (H, W) for grey. Uses the DataModule's mean/std when it has them,
    else stretches each image to its own range. Other inputs: see `display_features`."""
    if not are_images(images):
        raise ValueError(f"display_images needs (N, C, H, W) images, got shape {tuple(images.shape)}")
    images = images.detach().float().cpu()
    mean, std = _statistics(trainer)
    if mean is not None and std is not None and len(mean) == images.shape[1]:
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp(min=1e-8)
    scale = -(-MIN_DISPLAY_SIZE // min(images.shape[-2:]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [image[..., 0] if image.shape[-1] == 1 else image for image in pixels]


def display_features(inputs: Tensor, trainer: pl.Trainer) -> list[str]:
    """Normalized (N, ...) non-image model inputs -> one line of values per sample, in their own
    units again when the DataModule's mean/std are per feature (the last dimension), as for vectors."""
    values = inputs.detach().double().cpu()
    mean, std = _statistics(trainer)
    if mean is not None and std is not None and len(mean) == values.shape[-1]:
        values = values * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)
    lines = []
    for sample in values.flatten(1).tolist():
        shown = ", ".join(f"{v:.4g}" for v in sample[:MAX_SHOWN_FEATURES])
        lines.append(shown + (", ..." if len(sample) > MAX_SHOWN_FEATURES else ""))
    return lines


def caption(true: str, pred: str, confidence: float, loss: float) -> str:
    return f"true: {true} · pred: {pred} ({confidence:.2f}) · loss {loss:.2f}"
