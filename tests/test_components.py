"""Model components: each builder lands on exactly the shape it was asked for, over many sizes (primes,
ratios that do not divide), and passes a gradient to every parameter and to its input; the conv plans
obey their arithmetic far beyond the sizes run; every bad argument gets a clear error."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from project.model.components import MLP, ConvDecoder2d, ConvEncoder2d
from project.model.components.layers import MIN_NORM_VALUES
from project.model.components.shapes import (
    conv_out_size,
    conv_transpose_out_size,
    geometric_channels,
    plan_down,
    plan_up,
)

# Not 2: BatchNorm over 2 values outputs -1 and +1 whatever they are, so no gradient would reach the
# input of a layer normalized on 1x1 maps.
BATCH = 4
PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61)
FAST = settings(max_examples=30, deadline=None)

channel_counts = st.integers(1, 16)
# ReLU without a normalization can switch off a whole narrow layer for every sample (then nothing
# reaches the input, rightly); a norm centres each channel, so some units are always on.
norm_activation = st.sampled_from(
    [("batch", "relu"), ("batch", "tanh"), ("group", "relu"), ("group", "silu"), ("none", "gelu")]
)


def assert_exact_and_differentiable(
    module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> None:
    """`module` maps a (BATCH, *in_shape) input to exactly (BATCH, *out_shape), and the sum of its output
    sends a finite gradient to every parameter and a non-zero one to the input."""
    x = torch.randn(BATCH, *in_shape, requires_grad=True)
    y = module(x)
    assert tuple(y.shape) == (BATCH, *out_shape)
    y.sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} got a non-finite gradient"
    assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reached the input"


def size_up_to(most: int) -> st.SearchStrategy[int]:
    """A size from 1 to `most`, often a prime."""
    primes = [p for p in PRIMES if p <= most]
    return st.one_of(st.sampled_from(primes), st.integers(1, most)) if primes else st.integers(1, most)


@st.composite
def shrinking_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(C, H, W), (C', H', W'): every small size at most its big one, channels either way."""
    big = (draw(size_up_to(64)), draw(size_up_to(64)))
    small = tuple(draw(size_up_to(b)) for b in big)
    return (draw(channel_counts), *big), (draw(channel_counts), *small)


# ---- the plans, as integers: far beyond the sizes the modules are run on -----------------------------


@st.composite
def size_pairs(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    dims = draw(st.integers(1, 3))
    big = tuple(draw(st.integers(1, 5000)) for _ in range(dims))
    small = tuple(draw(st.integers(1, b)) for b in big)
    return big, small


@settings(max_examples=300, deadline=None)
@given(size_pairs())
def test_plan_down_reaches_the_target_by_the_conv_arithmetic(pair: tuple[tuple[int, ...], ...]) -> None:
    big, small = pair
    steps = plan_down(big, small)
    size = big
    for step in steps:
        assert step.in_size == size
        conv = tuple(
            conv_out_size(*args) for args in zip(size, step.kernel, step.stride, step.padding, strict=True)
        )
        assert (step.pool_to or conv) == step.out_size
        assert step.pool_to is None or step is steps[-1], "only the finishing step pools"
        for kernel, stride, padding in zip(step.kernel, step.stride, step.padding, strict=True):
            assert kernel <= 3 and stride in (1, 2)
            assert stride <= kernel, "a stride beyond the kernel would skip inputs"
            assert padding <= kernel // 2, "a window mostly of padding"
        size = step.out_size
    assert size == small
    # Halving only while it fits: at most ceil(log2(ratio)) halvings in the busiest dimension.
    halvings = max(math.ceil(math.log2(b / s)) for b, s in zip(big, small, strict=True))
    assert len(steps) - 1 <= halvings


@settings(max_examples=300, deadline=None)
@given(size_pairs())
def test_plan_up_is_the_transposed_mirror_of_plan_down(pair: tuple[tuple[int, ...], ...]) -> None:
    big, small = pair
    down, up = plan_down(big, small), plan_up(small, big)
    assert len(up) == len(down)
    for step, mirror in zip(up, reversed(down), strict=True):
        assert (step.in_size, step.out_size) == (mirror.out_size, mirror.in_size)
        assert (step.kernel, step.stride, step.padding) == (mirror.kernel, mirror.stride, mirror.padding)
        start = step.upsample_to or step.in_size
        grown = tuple(
            conv_transpose_out_size(*args)
            for args in zip(start, step.kernel, step.stride, step.padding, step.output_padding, strict=True)
        )
        assert grown == step.out_size
        assert all(0 <= op < stride for op, stride in zip(step.output_padding, step.stride, strict=True))
    assert up[-1].out_size == big


@given(st.integers(1, 512), st.integers(1, 512), st.integers(1, 12))
def test_geometric_channels_run_from_in_to_exactly_out(c_in: int, c_out: int, layers: int) -> None:
    widths = geometric_channels(c_in, c_out, layers)
    assert len(widths) == layers and widths[-1] == c_out
    path = (c_in, *widths)
    assert all(min(c_in, c_out) <= w <= max(c_in, c_out) for w in widths)
    assert path == tuple(sorted(path, reverse=c_out < c_in)), "not monotone"


# ---- the conv builders -----------------------------------------------------------------------------


@FAST
@given(shapes=shrinking_shapes(), norm_act=norm_activation)
def test_conv_encoder_lands_exactly_and_passes_gradients(
    shapes: tuple[tuple[int, ...], ...], norm_act: tuple[str, str]
) -> None:
    in_shape, out_shape = shapes
    norm, act = norm_act
    # Group norm needs 4 values per group; smaller layers are refused (tested below).
    assume(norm != "group" or min(in_shape[0], out_shape[0]) * math.prod(out_shape[1:]) >= MIN_NORM_VALUES)
    torch.manual_seed(0)
    encoder = ConvEncoder2d(in_shape, out_shape, norm=norm, activation=act)  # type: ignore[arg-type]
    assert_exact_and_differentiable(encoder, in_shape, out_shape)


@FAST
@given(shapes=shrinking_shapes(), norm_act=norm_activation)
def test_conv_decoder_lands_exactly_and_passes_gradients(
    shapes: tuple[tuple[int, ...], ...], norm_act: tuple[str, str]
) -> None:
    out_shape, in_shape = shapes
    norm, act = norm_act
    assume(norm != "group" or min(in_shape[0], out_shape[0]) * math.prod(in_shape[1:]) >= MIN_NORM_VALUES)
    torch.manual_seed(0)
    decoder = ConvDecoder2d(in_shape, out_shape, norm=norm, activation=act)  # type: ignore[arg-type]
    assert_exact_and_differentiable(decoder, in_shape, out_shape)


@pytest.mark.parametrize(
    ("big", "small"),
    [
        ((3, 32, 32), (64, 1, 1)),
        ((1, 28, 28), (16, 7, 7)),
        ((3, 37, 53), (10, 5, 3)),  # primes
        ((1, 8, 8), (8, 8, 8)),  # same size: one size-keeping layer
        ((2, 8, 13), (3, 5, 5)),  # 8 -> 5 pools, 13 -> 7 -> 5 does not
        ((4, 61, 2), (4, 1, 2)),  # one dimension done from the start
    ],
)
def test_named_shapes_encode_and_decode_exactly(
    big: tuple[int, int, int], small: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    assert_exact_and_differentiable(ConvEncoder2d(big, small), big, small)
    assert_exact_and_differentiable(ConvDecoder2d(small, big), small, big)


@FAST
@given(shrinking_shapes())
def test_encoder_then_mirrored_decoder_round_trips_the_shape(shapes: tuple[tuple[int, ...], ...]) -> None:
    big, small = shapes
    encoder, decoder = ConvEncoder2d(big, small, norm="none"), ConvDecoder2d(small, big, norm="none")  # type: ignore[arg-type]
    x = torch.randn(2, *big)
    assert decoder(encoder(x)).shape == x.shape
    assert [(s.kernel, s.stride) for s in decoder.plan] == [
        (s.kernel, s.stride) for s in reversed(encoder.plan)
    ]


def test_the_plan_is_as_documented() -> None:
    # ConvEncoder2d's docstring: 3 -> 64 channels at 32 -> 1 is 5 halvings and one size-keeping finish.
    encoder = ConvEncoder2d((3, 32, 32), (64, 1, 1))
    assert [step.stride for step in encoder.plan] == [(2, 2)] * 5 + [(1, 1)]
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(geometric_channels(3, 64, 6))
    # Only the last convolution has a bias, and nothing follows it.
    assert [c.bias is not None for c in convs] == [False] * 5 + [True]
    assert isinstance(encoder.layers[-1], nn.Conv2d)
    # 64 x 8 -> 1 x 1: the width is done after 3 halvings and rides along at stride 1.
    assert [step.stride for step in ConvEncoder2d((1, 64, 8), (1, 1, 1)).plan] == (
        [(2, 2)] * 3 + [(2, 1)] * 3 + [(1, 1)]
    )
    # Same size: one size-keeping layer. 8 -> 5 has no kernel <= 3: pool (encoder), interpolate (decoder).
    assert len(ConvEncoder2d((1, 8, 8), (8, 8, 8)).plan) == 1
    pooled = ConvEncoder2d((2, 8, 13), (3, 5, 5))
    assert pooled.plan[-1].pool_to == (5, 5) and isinstance(pooled.layers[-1], nn.AdaptiveAvgPool2d)
    upsampled = ConvDecoder2d((3, 5, 5), (2, 8, 13))
    assert upsampled.plan[0].upsample_to == (8, 5) and isinstance(upsampled.layers[0], nn.Upsample)


# ---- MLP ---------------------------------------------------------------------------------------------


@FAST
@given(
    in_features=channel_counts,
    out_features=channel_counts,
    hidden=st.lists(st.integers(1, 16), max_size=3),
    leading=st.lists(st.integers(1, 3), max_size=2),
    norm_act=st.sampled_from([("batch", "relu"), ("layer", "gelu"), ("none", "tanh"), ("none", "silu")]),
)
def test_mlp_lands_exactly_and_passes_gradients(
    in_features: int, out_features: int, hidden: list[int], leading: list[int], norm_act: tuple[str, str]
) -> None:
    norm, act = norm_act
    assume(norm != "layer" or all(width >= MIN_NORM_VALUES for width in hidden))
    torch.manual_seed(0)
    # No dropout here: on a 1-wide layer it can drop every active unit, and then rightly no gradient flows.
    mlp = MLP(in_features, out_features, hidden, activation=act, norm=norm)  # type: ignore[arg-type]
    assert_exact_and_differentiable(mlp, (*leading, in_features), (*leading, out_features))


def test_mlp_layer_order_and_dropout() -> None:
    mlp = MLP(6, 2, hidden=(8, 4), activation="gelu", dropout=0.25, norm="batch")
    kinds = [type(layer) for layer in mlp.layers]
    hidden_layer = [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout]
    assert kinds == [*hidden_layer, *hidden_layer, nn.Linear]
    assert all(layer.p == 0.25 for layer in mlp.layers if isinstance(layer, nn.Dropout))
    # BatchNorm subtracts a bias: only the output layer has one.
    assert [layer.bias is not None for layer in mlp.layers if isinstance(layer, nn.Linear)] == [
        False,
        False,
        True,
    ]


# ---- errors: what is wrong and how to fix it ---------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ConvEncoder2d((3, 8, 8), (3, 16, 16)),
            "ConvEncoder2d can only shrink or keep the spatial size, but out_shape (3, 16, 16) is larger "
            "than in_shape (3, 8, 8) (height 16 > 8, width 16 > 8): use ConvDecoder2d to upsample",
        ),
        (
            lambda: ConvDecoder2d((3, 16, 16), (3, 8, 16)),
            "ConvDecoder2d can only grow or keep the spatial size, but out_shape (3, 8, 16) is smaller than "
            "in_shape (3, 16, 16) (height 8 < 16): use ConvEncoder2d to downsample",
        ),
        (
            lambda: ConvEncoder2d((3, 8, 8), (3, 16, 4)),
            "chain a ConvEncoder2d and a ConvDecoder2d to shrink one dimension and grow another",
        ),
        (
            lambda: ConvEncoder2d((3, 0, 8), (3, 1, 1)),
            "ConvEncoder2d: in_shape must be 3 positive ints (channels, height, width), got (3, 0, 8)",
        ),
        (lambda: ConvDecoder2d((3, 4, 4), (-1, 8, 8)), "ConvDecoder2d: out_shape must be 3 positive ints"),
        (lambda: ConvEncoder2d((True, 8, 8), (3, 4, 4)), "in_shape must be 3 positive ints"),
        (
            lambda: ConvEncoder2d((3, 8, 8), (3, 4, 4), norm="bn"),  # type: ignore[arg-type]
            "ConvEncoder2d: norm must be one of 'batch', 'group', 'none', got 'bn'",
        ),
        (
            lambda: ConvEncoder2d((1, 2, 2), (1, 1, 1), norm="group"),
            "ConvEncoder2d: norm='group' normalizes groups of at least 4 values, but a layer outputs only "
            "1 channel(s) x 1 position(s) per sample: use norm='batch' or 'none', or more channels",
        ),
        (lambda: ConvDecoder2d((3, 4, 4), (3, 8, 8), activation="swish"), "activation must be one of"),  # type: ignore[arg-type]
        (lambda: MLP(0, 3), "MLP: in_features must be a positive int, got 0"),
        (lambda: MLP(3, 2, hidden=(4, 0)), "MLP: hidden[1] must be a positive int, got 0"),
        (lambda: MLP(3, 2, dropout=1.0), "MLP: dropout must be in [0, 1)"),
        (
            lambda: MLP(3, 2, hidden=(8, 2), norm="layer"),
            "MLP: norm='layer' needs hidden widths of at least 4",
        ),
    ],
)
def test_bad_arguments_are_refused_with_a_fix(build: Callable[[], nn.Module], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


@pytest.mark.parametrize(
    ("module", "x", "message"),
    [
        (
            ConvEncoder2d((3, 8, 8), (4, 2, 2)),
            torch.randn(2, 3, 9, 8),
            "expects (batch, 3, 8, 8), got (2, 3, 9, 8)",
        ),
        (MLP(4, 2), torch.randn(2, 5), "MLP expects (..., 4), got (2, 5)"),
    ],
)
def test_inputs_of_another_shape_are_refused(module: nn.Module, x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        module(x)
