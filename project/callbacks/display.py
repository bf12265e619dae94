"""Turning model inputs back into pictures and words for the visual callbacks."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.nn import functional as F

MIN_DISPLAY_SIZE = 64  # px: smaller images (8x8 digits) are enlarged, pixel for pixel, to be seen


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


def display_images(images: Tensor, trainer: pl.Trainer) -> list[np.ndarray]:
    """Normalized (N, C, H, W) model inputs -> uint8 images as they looked before normalization:
    (H, W, 3) for colour, (H, W) for grey. Uses the DataModule's mean/std when it has them,
    else stretches each image to its own range."""
    images = images.detach().float().cpu()
    datamodule = getattr(trainer, "datamodule", None)
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
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


def caption(true: str, pred: str, confidence: float, loss: float) -> str:
    return f"true: {true} · pred: {pred} ({confidence:.2f}) · loss {loss:.2f}"
