"""Size arithmetic for the conv builders: the output size of a (transposed) convolution, and the layer
plans that take a spatial size to an exact target, for any sizes (primes, ratios that do not divide).

Pure integers, no torch, and independent of the number of spatial dimensions (one size per dimension)::

    >>> [step.out_size for step in plan_down((37, 53), (5, 3))]
    [(19, 27), (10, 14), (5, 7), (5, 4), (5, 3)]
    >>> [step.out_size for step in plan_up((5, 3), (37, 53))]
    [(5, 4), (5, 7), (10, 14), (19, 27), (37, 53)]

`plan_down` is the heuristic that `ConvEncoder2d` documents; `plan_up` is its mirror image, step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A halving step: kernel 3, stride 2, padding 1 takes a size s to ceil(s / 2).
HALVE_KERNEL, HALVE_PADDING = 3, 1
# The last step (stride 1) by how much it still has to shrink: (kernel, padding), with
# kernel - 2 * padding - 1 == shrink. Kernels stay <= 3, like every other layer: the exact kernel for a
# larger shrink would be shrink + 1 wide (31 x 31 for 62 -> 32) and dominate the parameter count.
FINISH = {0: (3, 1), 1: (2, 0), 2: (3, 0)}
# What the last step uses where it has to shrink more than FINISH covers: keep the size, then pool.
KEEP = (3, 1)


@dataclass(frozen=True)
class ConvStep:
    """One layer of a plan; every field holds one value per spatial dimension.

    An encoder step is a convolution from `in_size`, then an adaptive average pool to `pool_to` when set.
    A decoder step is an interpolation to `upsample_to` when set, then a transposed convolution whose
    `output_padding` settles the rounding that stride 2 leaves open. Either way it ends at `out_size`.
    """

    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    pool_to: tuple[int, ...] | None = None
    upsample_to: tuple[int, ...] | None = None


def conv_out_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output size of `nn.Conv*d` (dilation 1) along one dimension."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose_out_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, output_padding: int = 0
) -> int:
    """Output size of `nn.ConvTranspose*d` (dilation 1) along one dimension."""
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def halves(size: int, target: int) -> bool:
    """Whether a halving step still fits: it shrinks `size` and does not go below `target`."""
    return size > target and -(-size // 2) >= target


def _check_sizes(in_size: Sequence[int], out_size: Sequence[int], shrink: bool) -> None:
    if len(in_size) != len(out_size) or min(*in_size, *out_size) < 1:
        got = f"{tuple(in_size)} -> {tuple(out_size)}"
        raise ValueError(f"sizes must be positive, one per dimension on both sides, got {got}")
    if any((t > s) if shrink else (t < s) for s, t in zip(in_size, out_size, strict=True)):
        way = "shrink or keep" if shrink else "grow or keep"
        raise ValueError(f"this plan can only {way} each size, got {tuple(in_size)} -> {tuple(out_size)}")


def plan_down(in_size: Sequence[int], out_size: Sequence[int]) -> list[ConvStep]:
    """The layers that shrink `in_size` to exactly `out_size` (each target <= its input size)."""
    _check_sizes(in_size, out_size, shrink=True)
    n = len(in_size)
    size, target = tuple(in_size), tuple(out_size)
    steps: list[ConvStep] = []
    # Each dimension halves on its own; one that is done rides along at stride 1 (same size).
    while any(halves(s, t) for s, t in zip(size, target, strict=True)):
        stride = tuple(2 if halves(s, t) else 1 for s, t in zip(size, target, strict=True))
        new = tuple(
            conv_out_size(s, HALVE_KERNEL, st, HALVE_PADDING) for s, st in zip(size, stride, strict=True)
        )
        steps.append(ConvStep(size, new, (HALVE_KERNEL,) * n, stride, (HALVE_PADDING,) * n, (0,) * n))
        size = new
    # Now target <= size <= 2 * target - 2 in every dimension: one stride-1 step finishes.
    kernel, padding = zip(*(FINISH.get(s - t, KEEP) for s, t in zip(size, target, strict=True)), strict=True)
    conv_size = tuple(conv_out_size(s, k, 1, p) for s, k, p in zip(size, kernel, padding, strict=True))
    pool_to = target if conv_size != target else None
    steps.append(ConvStep(size, target, tuple(kernel), (1,) * n, tuple(padding), (0,) * n, pool_to=pool_to))
    return steps


def plan_up(in_size: Sequence[int], out_size: Sequence[int]) -> list[ConvStep]:
    """The layers that grow `in_size` to exactly `out_size`: `plan_down(out_size, in_size)` reversed,
    each step transposed (same kernel, stride and padding), so an encoder and its decoder mirror."""
    _check_sizes(in_size, out_size, shrink=False)
    steps: list[ConvStep] = []
    for down in reversed(plan_down(out_size, in_size)):
        start, upsample_to = down.out_size, None
        if down.pool_to is not None:
            # Undo the pool first: back to the size the encoder's convolution produced.
            upsample_to = tuple(
                conv_out_size(s, k, st, p)
                for s, k, st, p in zip(down.in_size, down.kernel, down.stride, down.padding, strict=True)
            )
            start = upsample_to
        reached = tuple(
            conv_transpose_out_size(s, k, st, p)
            for s, k, st, p in zip(start, down.kernel, down.stride, down.padding, strict=True)
        )
        output_padding = tuple(t - r for t, r in zip(down.in_size, reached, strict=True))
        steps.append(
            ConvStep(
                down.out_size,
                down.in_size,
                down.kernel,
                down.stride,
                down.padding,
                output_padding,
                upsample_to=upsample_to,
            )
        )
    return steps


def geometric_channels(in_channels: int, out_channels: int, layers: int) -> tuple[int, ...]:
    """Output channels of each of `layers` layers, on a geometric path from `in_channels` to exactly
    `out_channels`: 3 -> 64 over 4 layers is (6, 14, 30, 64)."""
    ratio = out_channels / in_channels
    inner = tuple(max(1, round(in_channels * ratio ** (i / layers))) for i in range(1, layers))
    return (*inner, out_channels)
