"""`ResidualStack`: shape-preserving residual convolution blocks for (C, L) sequences or (C, H, W) maps::

stack = ResidualStack(channels=32, depth=4)             # 2D by default
stack(torch.randn(8, 32, 15, 9)).shape                  # (8, 32, 15, 9): any size, same out
ResidualStack(channels=16, depth=2, dims=1)(torch.randn(8, 16, 100)).shape   # (8, 16, 100)
"""

from __future__ import annotations

from torch import Tensor, nn

from project.model.components.checks import check_choice, check_positive
from project.model.components.layers import (
    ACTIVATIONS,
    CONV_NORMS,
    Activation,
    ConvNorm,
    make_activation,
    make_conv_norm,
)


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))): a pre-activation basic block (He et al., 2016, "Identity
    Mappings in Deep Residual Networks"). The skip path is the identity, untouched by any norm or
    activation, so a deep stack still passes its input, and its gradient, straight through."""

    def __init__(self, channels: int, dims: int, kernel_size: int, norm: str, activation: str) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        padding = kernel_size // 2  # odd kernel, stride 1: the size is kept
        # The first conv feeds a norm, which would subtract its bias; the second feeds the sum.
        self.branch = nn.Sequential(
            make_conv_norm(norm, channels, dims, None, "ResidualStack"),
            make_activation(activation),
            conv(channels, channels, kernel_size, padding=padding, bias=norm == "none"),
            make_conv_norm(norm, channels, dims, None, "ResidualStack"),
            make_activation(activation),
            conv(channels, channels, kernel_size, padding=padding),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.branch(x)
        return out


class ResidualStack(nn.Module):
    """`depth` pre-activation residual blocks (`ResidualBlock`) of `channels` channels; the output has
    the input's shape, for any length or height and width.

    Like any pre-activation stack, the output is a raw sum, neither normalized nor activated: follow it
    with a norm and an activation if the next layer expects that (a pre-activation ResNet does, before
    its pooling and classifier).
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        dims: int = 2,
        kernel_size: int = 3,
        norm: ConvNorm = "batch",
        activation: Activation = "relu",
    ) -> None:
        """
        Args:
            channels: channels of the input, kept throughout.
            depth: number of residual blocks (two convolutions each).
            dims: 1 for (batch, channels, length), 2 for (batch, channels, height, width).
            kernel_size: an odd kernel size, so that padding keeps the size.
            norm: "batch", "group" (GroupNorm, up to 8 groups of at least 2 channels) or "none".
            activation: "relu", "leaky_relu", "gelu", "silu" or "tanh".
        """
        super().__init__()
        self.channels = check_positive("ResidualStack", "channels", channels)
        self.depth = check_positive("ResidualStack", "depth", depth)
        if dims not in (1, 2):
            raise ValueError(f"ResidualStack: dims must be 1 (sequences) or 2 (images), got {dims!r}")
        self.dims = dims
        if check_positive("ResidualStack", "kernel_size", kernel_size) % 2 == 0:
            raise ValueError(
                f"ResidualStack: kernel_size must be odd so that the size is kept, got {kernel_size}: "
                f"use {kernel_size - 1} or {kernel_size + 1}"
            )
        check_choice("ResidualStack", "norm", norm, CONV_NORMS)
        check_choice("ResidualStack", "activation", activation, ACTIVATIONS)
        self.blocks = nn.Sequential(
            *(ResidualBlock(channels, dims, kernel_size, norm, activation) for _ in range(depth))
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.dims + 2 or x.shape[1] != self.channels:
            layout = "length" if self.dims == 1 else "height, width"
            raise ValueError(
                f"ResidualStack expects (batch, {self.channels}, {layout}), got {tuple(x.shape)}"
            )
        out: Tensor = self.blocks(x)
        return out
