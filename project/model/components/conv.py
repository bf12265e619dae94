"""Conv stacks planned from shapes: `ConvEncoder2d`/`ConvDecoder2d` take (C, H, W) maps to an exact
(C', H', W'), for any sizes::

    encoder = ConvEncoder2d(in_shape=(3, 37, 53), out_shape=(10, 5, 3))
    decoder = ConvDecoder2d(in_shape=(10, 5, 3), out_shape=(3, 37, 53))   # its mirror image
    decoder(encoder(images)).shape                                      # (batch, 3, 37, 53)

The size arithmetic lives in `shapes.py`; this file turns its plans into layers.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor, nn

from project.model.components.checks import check_choice, check_shape
from project.model.components.layers import (
    ACTIVATIONS,
    CONV_NORMS,
    Activation,
    ConvNorm,
    make_activation,
    make_conv_norm,
)
from project.model.components.shapes import geometric_channels, plan_down, plan_up

AXES = ("height", "width")


class _ConvStack(nn.Module):
    """What the encoder and the decoder share; each fixes `transposed`."""

    transposed: ClassVar[bool]

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_shape: tuple[int, int, int],
        norm: ConvNorm = "batch",
        activation: Activation = "relu",
    ) -> None:
        """
        Args:
            in_shape: input (channels, height, width).
            out_shape: output (channels, height, width); height and width at most the input's for the
                encoder, at least the input's for the decoder.
            norm: "batch" (BatchNorm2d: in training, batch x positions must exceed 2 per layer, so use
                batches of 4 or more where maps get to 1x1), "group" (GroupNorm, up to 8 groups of at least
                4 values per sample; smaller layers are refused) or "none".
            activation: "relu", "leaky_relu", "gelu", "silu" or "tanh".
        """
        super().__init__()
        owner = type(self).__name__
        self.in_shape = check_shape(owner, "in_shape", in_shape, ("channels", *AXES))
        self.out_shape = check_shape(owner, "out_shape", out_shape, ("channels", *AXES))
        check_choice(owner, "norm", norm, CONV_NORMS)
        check_choice(owner, "activation", activation, ACTIVATIONS)
        self._check_direction(owner)
        in_size, out_size = self.in_shape[1:], self.out_shape[1:]
        self.plan = plan_up(in_size, out_size) if self.transposed else plan_down(in_size, out_size)
        widths = geometric_channels(self.in_shape[0], self.out_shape[0], len(self.plan))

        layers: list[nn.Module] = []
        channels = self.in_shape[0]
        for i, (step, width) in enumerate(zip(self.plan, widths, strict=True)):
            last = i == len(self.plan) - 1
            if step.upsample_to is not None:
                layers.append(nn.Upsample(size=step.upsample_to, mode="bilinear", align_corners=False))
            # A bias right before a normalization would be subtracted again: only the last layer (and
            # every layer under norm="none") gets one.
            bias = last or norm == "none"
            conv: type[nn.Module] = nn.ConvTranspose2d if self.transposed else nn.Conv2d
            extra: dict[str, Any] = {"output_padding": step.output_padding} if self.transposed else {}
            layers.append(conv(channels, width, step.kernel, step.stride, step.padding, bias=bias, **extra))
            if step.pool_to is not None:
                layers.append(nn.AdaptiveAvgPool2d(step.pool_to))
            if not last:
                layers.append(make_conv_norm(norm, width, math.prod(step.out_size), owner))
                layers.append(make_activation(activation))
            channels = width
        self.layers = nn.Sequential(*layers)

    def _check_direction(self, owner: str) -> None:
        pairs = list(zip(AXES, self.in_shape[1:], self.out_shape[1:], strict=True))
        grown = [f"{axis} {o} > {i}" for axis, i, o in pairs if o > i]
        shrunk = [f"{axis} {o} < {i}" for axis, i, o in pairs if o < i]
        encoder, decoder = owner.replace("Decoder", "Encoder"), owner.replace("Encoder", "Decoder")
        if self.transposed and shrunk:
            problem = f"can only grow or keep the spatial size, but out_shape {self.out_shape} is smaller"
            wrong, fix = shrunk, f"use {encoder} to downsample"
        elif not self.transposed and grown:
            problem = f"can only shrink or keep the spatial size, but out_shape {self.out_shape} is larger"
            wrong, fix = grown, f"use {decoder} to upsample"
        else:
            return
        if grown and shrunk:
            fix = f"chain a {encoder} and a {decoder} to shrink one dimension and grow another"
        raise ValueError(f"{owner} {problem} than in_shape {self.in_shape} ({', '.join(wrong)}): {fix}")

    def forward(self, x: Tensor) -> Tensor:
        # The plan is exact for one input size only: another would come out at some other size, silently.
        if tuple(x.shape[1:]) != self.in_shape:
            expected = ", ".join(map(str, self.in_shape))
            raise ValueError(f"{type(self).__name__} expects (batch, {expected}), got {tuple(x.shape)}")
        out: Tensor = self.layers(x)
        return out


class ConvEncoder2d(_ConvStack):
    """Convolutions from (C, H, W) maps to exactly (C', H', W'), with H' <= H and W' <= W; depth, strides,
    kernels, padding and channel widths all follow from the two shapes, whatever the sizes.

    Each spatial dimension is planned on its own (`shapes.plan_down`), then the dimensions share layers:

    1. **Halve** while it does not undershoot: a 3x3 convolution with stride 2 and padding 1 takes a size
       s to ceil(s / 2), used while ceil(s / 2) >= the target. A dimension that is done rides along at
       stride 1 while the other still halves (64 x 8 -> 1 x 1 halves the height 6 times, the width 3).
    2. **Finish** with one stride-1 convolution, the size s now between t and 2t - 2 for a target t. It
       is solved exactly where a kernel of at most 3 does it: kernel 3 with padding 1 when s = t, kernel 2
       when s = t + 1, kernel 3 unpadded when s = t + 2. Otherwise (s - t >= 3, which needs t >= 5, e.g.
       8 -> 5) it keeps the size and an adaptive average pool makes the exact size: the exact kernel,
       s - t + 1 wide, would reach t - 1 (31 x 31 for 62 -> 32) and dominate the parameters.

    Channels go geometrically from C to C' over the layers (3 -> 64 in 4 layers: 6, 14, 30, 64). Every
    layer but the last is followed by the normalization and the activation; the last layer's output is
    left raw (any range, sign and scale: a code, features, logits). Only it has a bias (all layers do
    with norm="none"): a normalization subtracts any bias before it.

    ::

        encoder = ConvEncoder2d(in_shape=(3, 32, 32), out_shape=(64, 1, 1))   # 5 halvings + 1 finish
        encoder(torch.randn(8, 3, 32, 32)).shape                               # (8, 64, 1, 1)
        [step.stride for step in encoder.plan]                                 # the plan, for a look
    """

    transposed = False


class ConvDecoder2d(_ConvStack):
    """Transposed convolutions from (C, H, W) maps to exactly (C', H', W'), with H' >= H and W' >= W: the
    mirror image of `ConvEncoder2d(out_shape, in_shape)`, layer for layer.

    The layers are that encoder's in reverse order (`shapes.plan_up`), each a `ConvTranspose2d` with the
    same kernel, stride and padding:

    1. **Finish first**, at the smallest size: the encoder's last layer transposed grows each size by
       0, 1 or 2 (kernel 3 padded, kernel 2, kernel 3 unpadded). Where the encoder pooled, a bilinear
       interpolation to the size before its pool comes first, then a size-keeping transposed convolution.
    2. **Double**: a 3x3 transposed convolution with stride 2 and padding 1 takes a size s to 2s - 1;
       `output_padding` 1 adds the last row or column where the encoder's size was even. No interpolation
       or cropping: every size on the way is the encoder's, exactly.

    Channels go geometrically from C to C' over the layers. Every layer but the last is followed by the
    normalization and the activation; the last layer's output is left raw (add e.g. a sigmoid for images
    in [0, 1]). Only it has a bias (all layers do with norm="none").

    ::

        decoder = ConvDecoder2d(in_shape=(16, 7, 7), out_shape=(1, 28, 28))
        decoder(torch.randn(8, 16, 7, 7)).shape                 # (8, 1, 28, 28)
    """

    transposed = True
