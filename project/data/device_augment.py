"""Batched image augmentation and normalization that run wherever the images are (CPU or GPU).

Pure functions on (B, C, H, W) tensors, uint8 (0..255) or float (0..1). Each random transform comes
in two parts: a draw of its parameters, and the transform applied with explicit per-sample
parameters, so a test can compare the latter with torchvision's CPU transforms sample by sample::

    gen = torch.Generator(device=images.device).manual_seed(0)
    tops, lefts = random_crop_params(len(images), pad=4, generator=gen, device=images.device)
    out = crop_padded(images, tops, lefts, pad=4)            # == v2.RandomCrop(32, padding=4, "reflect")
    out = flip(out, random_flip_flags(len(out), gen, out.device))   # == v2.RandomHorizontalFlip()
    x = normalize(out, mean, std)                           # == ToDtype(float32, scale=True) + Normalize

or in one call each: `random_crop_padded(images, 4, gen)`, `random_flip(images, gen)`, and
`FusedNormalize(mean, std)` to normalize batch after batch.

Everything is integer indexing or `torch.where`, so the uint8 results equal torchvision's exactly,
on any device. Parameters are drawn on the generator's device and moved to the images' device: a
generator on the images' device (as the device loader uses) needs no host copy.

`Augmentation` is what a dataset declares: the same crop and flip as torchvision transforms for the
CPU DataLoader (`transforms`) and as one call on a batch for the device loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms import v2

PaddingMode = Literal["reflect", "constant"]


def _check_batch(images: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch of images, got shape {tuple(images.shape)}")


def reflect_indices(size: int, pad: int, device: torch.device | str | None = None) -> Tensor:
    """Source positions of a reflect-padded axis: `size + 2 * pad` indices into `0..size-1`.

    Reflection excludes the edge pixel (as torch's and torchvision's "reflect"): for size 4, pad 2
    the row order is 2 1 | 0 1 2 3 | 2 1."""
    if pad >= size:
        raise ValueError(f"reflect padding needs pad < size, got pad={pad} for size {size}")
    positions = torch.arange(-pad, size + pad, device=device)
    positions = positions.abs()  # the left border: -i -> i
    return torch.where(positions >= size, 2 * (size - 1) - positions, positions)  # the right border


def pad_images(images: Tensor, pad: int, padding_mode: PaddingMode = "reflect") -> Tensor:
    """Pad height and width by `pad` on each side: reflected, or with zeros ("constant").

    Reflection is done by indexing because torch's reflect padding refuses uint8 tensors."""
    _check_batch(images)
    if pad == 0:
        return images
    if padding_mode == "constant":
        return F.pad(images, (pad, pad, pad, pad), mode="constant", value=0)
    if padding_mode != "reflect":
        raise ValueError(f"padding_mode must be 'reflect' or 'constant', got {padding_mode!r}")
    rows = reflect_indices(images.shape[-2], pad, images.device)
    cols = reflect_indices(images.shape[-1], pad, images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


def crop_padded(
    images: Tensor, tops: Tensor, lefts: Tensor, pad: int, padding_mode: PaddingMode = "reflect"
) -> Tensor:
    """Pad each image by `pad`, then cut the original size back out at (tops[i], lefts[i]).

    `tops`/`lefts` are (B,) integers in 0..2*pad, positions in the padded image: (pad, pad) is the
    identity. Per image this is torchvision's `crop(pad(image, [pad], padding_mode=...), top, left, H, W)`,
    which is what `v2.RandomCrop(size, padding=pad)` does, so images are shifted by up to `pad` pixels."""
    _check_batch(images)
    batch, channels, height, width = images.shape
    if tops.shape != (batch,) or lefts.shape != (batch,):
        raise ValueError(
            f"tops and lefts must have shape ({batch},), got {tuple(tops.shape)}, {tuple(lefts.shape)}"
        )
    padded = pad_images(images, pad, padding_mode)
    tops, lefts = tops.to(images.device), lefts.to(images.device)
    rows = tops[:, None] + torch.arange(height, device=images.device)  # (B, H) rows of the padded image
    cols = lefts[:, None] + torch.arange(width, device=images.device)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded.shape[-1]))
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def flip(images: Tensor, flags: Tensor) -> Tensor:
    """Mirror left-right the images whose (B,) boolean `flags` are set (torchvision's `horizontal_flip`)."""
    _check_batch(images)
    if flags.shape != (len(images),):
        raise ValueError(f"flags must have shape ({len(images)},), got {tuple(flags.shape)}")
    flags = flags.to(device=images.device, dtype=torch.bool)
    return torch.where(flags[:, None, None, None], images.flip(-1), images)


def _device_of(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def random_crop_params(
    batch_size: int,
    pad: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(tops, lefts) for `crop_padded`, each uniform in 0..2*pad, one per image, on `device`."""
    draw_on = _device_of(generator, device)
    offsets = torch.randint(0, 2 * pad + 1, (2, batch_size), generator=generator, device=draw_on)
    offsets = offsets.to(device if device is not None else draw_on)
    return offsets[0], offsets[1]


def random_flip_flags(
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    p: float = 0.5,
) -> Tensor:
    """(B,) booleans for `flip`, each True with probability `p`, on `device`."""
    draw_on = _device_of(generator, device)
    flags = torch.rand(batch_size, generator=generator, device=draw_on) < p
    return flags.to(device if device is not None else draw_on)


def random_crop_padded(
    images: Tensor, pad: int, generator: torch.Generator | None = None, padding_mode: PaddingMode = "reflect"
) -> Tensor:
    """`crop_padded` at random offsets: each image shifted by -pad..pad pixels on each axis."""
    tops, lefts = random_crop_params(len(images), pad, generator, images.device)
    return crop_padded(images, tops, lefts, pad, padding_mode)


def random_flip(images: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """`flip` of a random half (probability `p`) of the images."""
    return flip(images, random_flip_flags(len(images), generator, images.device, p))


@dataclass(frozen=True)
class Augmentation:
    """A random translation by up to `crop_padding` pixels (pad, then crop back to size; 0: none) and,
    when `flip` is set, a random horizontal flip: how a dataset augments its training images."""

    crop_padding: int = 0
    padding_mode: PaddingMode = "reflect"
    flip: bool = False

    def transforms(self, size: tuple[int, int]) -> list[v2.Transform]:
        """The per-image torchvision transforms of the CPU DataLoader, for (height, width) images."""
        out: list[v2.Transform] = []
        if self.crop_padding > 0:
            out.append(v2.RandomCrop(size, padding=self.crop_padding, padding_mode=self.padding_mode))
        if self.flip:
            out.append(v2.RandomHorizontalFlip())
        return out

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The same on a (B, C, H, W) batch, drawing from `generator`."""
        if self.crop_padding > 0:
            images = random_crop_padded(images, self.crop_padding, generator, self.padding_mode)
        if self.flip:
            images = random_flip(images, generator)
        return images


class FusedNormalize:
    """`normalize` with its per-channel constants built once per device and input dtype.

        norm = FusedNormalize(mean, std)
        for images in batches: x = norm(images)

    A loop should use this rather than `normalize`: building the constants copies them from the host,
    and a host-to-GPU copy makes the CPU wait for the GPU, at every batch."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
    ) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel each, got {len(mean)} and {len(std)}")
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
        self._constants: dict[tuple[torch.device, bool], tuple[Tensor, Tensor]] = {}

    def _scale_shift(self, device: torch.device, uint8: bool) -> tuple[Tensor, Tensor]:
        key = (device, uint8)
        if key not in self._constants:
            mean = torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
            max_value = 255.0 if uint8 else 1.0
            # Folded in float64 first, so the single rounding is the cast to `dtype`.
            scale = (1.0 / (max_value * std)).to(device=device, dtype=self.dtype)
            shift = (-mean / std).to(device=device, dtype=self.dtype)
            self._constants[key] = scale, shift
        return self._constants[key]

    def __call__(self, images: Tensor) -> Tensor:
        _check_batch(images)
        if images.shape[1] != len(self.mean):
            raise ValueError(f"mean and std have {len(self.mean)} channels, the images {images.shape[1]}")
        scale, shift = self._scale_shift(images.device, images.dtype == torch.uint8)
        return torch.addcmul(shift, images.to(self.dtype), scale)


def normalize(
    images: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> Tensor:
    """uint8 0..255 (or float 0..1) -> `(x / 255 - mean) / std` as `dtype`, in one multiply-add.

    The same as torchvision's `ToDtype(dtype, scale=True)` then `Normalize(mean, std)` up to float
    rounding; float input is taken to be in 0..1 already, as `ToDtype` does. The memory format of
    the input (e.g. channels_last) is kept. In a loop, use `FusedNormalize`."""
    return FusedNormalize(mean, std, dtype)(images)
