"""Activations and normalizations by name, so that builders take them as plain strings (YAML configs,
checkpoints)::

    make_activation("gelu")                              # nn.GELU()
    make_conv_norm("group", channels=16, positions=64, owner="ConvEncoder2d")  # GroupNorm(8, 16)
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

Activation = Literal["relu", "leaky_relu", "gelu", "silu", "tanh"]
ConvNorm = Literal["batch", "group", "none"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
CONV_NORMS: tuple[str, ...] = get_args(ConvNorm)

# Normalizing fewer values than this leaves almost nothing of the input: one value always becomes 0,
# two always become -1 and +1, so the output no longer depends on the input and no gradient reaches it.
MIN_NORM_VALUES = 4
# GroupNorm's group count: at most this many, fewer where groups would get too small.
MAX_GROUPS = 8


def make_activation(name: str) -> nn.Module:
    modules: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
    }
    if name not in modules:
        raise ValueError(f"activation must be one of {', '.join(map(repr, modules))}, got {name!r}")
    return modules[name]()


def group_count(channels: int, positions: int) -> int | None:
    """GroupNorm's groups: the most (up to `MAX_GROUPS`) dividing `channels` whose groups hold at least
    `MIN_NORM_VALUES` values each (channels per group x `positions`), or None if even one group is too
    small."""
    for groups in range(min(MAX_GROUPS, channels), 0, -1):
        if channels % groups == 0 and channels // groups * positions >= MIN_NORM_VALUES:
            return groups
    return None


def make_conv_norm(kind: str, channels: int, positions: int, owner: str) -> nn.Module:
    """The normalization after a 2-D convolution with `channels` outputs on maps of `positions` values:
    BatchNorm, GroupNorm, or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = group_count(channels, positions)
        if groups is None:
            raise ValueError(
                f"{owner}: norm='group' normalizes groups of at least {MIN_NORM_VALUES} values, but a layer "
                f"outputs only {channels} channel(s) x {positions} position(s) per sample: use norm='batch' "
                f"or 'none', or more channels"
            )
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"{owner}: norm must be one of {', '.join(map(repr, CONV_NORMS))}, got {kind!r}")
