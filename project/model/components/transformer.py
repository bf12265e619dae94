"""`TransformerEncoder`: (batch, length, in_features) -> (batch, length, out_features), or pooled to
(batch, out_features), around `torch.nn.TransformerEncoder`::

    encoder = TransformerEncoder(in_features=12, out_features=5, d_model=64, heads=4, pool="cls")
    encoder(torch.randn(8, 30, 12)).shape                       # (8, 5)
    mask = torch.arange(30) >= torch.tensor([[30], [17]])       # True = padding; 2 sequences
    encoder(torch.randn(2, 30, 12), padding_mask=mask).shape    # (2, 5): padding is ignored
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from project.model.components.checks import check_choice, check_positive
from project.model.components.layers import MIN_NORM_VALUES

Pool = Literal["none", "mean", "cls"]
Positional = Literal["learned", "sinusoidal", "none"]
POOLS: tuple[str, ...] = get_args(Pool)
POSITIONALS: tuple[str, ...] = get_args(Positional)


def sinusoidal_positions(length: int, d_model: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(length, d_model) encodings of "Attention Is All You Need": sin and cos, interleaved, of
    position / 10000^(2i / d_model). Computed for any length, so nothing caps the sequence."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    angles = position * frequency
    # Interleave sin, cos; an odd d_model drops the last cos.
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)[:, :d_model].to(dtype)


class TransformerEncoder(nn.Module):
    """Linear input projection to `d_model`, plus positions -> `layers` pre-norm encoder layers
    (`nn.TransformerEncoderLayer`, batch_first, norm_first: the stable ordering without warm-up tricks)
    -> final LayerNorm -> pooling -> linear output projection (raw outputs).

    Pooling: "none" keeps one output per token; "mean" averages the tokens that are not padding; "cls"
    prepends a learned token (without a position) and reads the output there. Positions: "learned"
    (one trained vector per position, up to `max_len`), "sinusoidal" (fixed, any length) or "none"
    (the tokens are a set: permuting them permutes the outputs).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_features: int | None = None,
        dropout: float = 0.1,
        pool: Pool = "none",
        positional: Positional = "learned",
        max_len: int = 512,
        activation: Literal["relu", "gelu"] = "gelu",
    ) -> None:
        """
        Args:
            in_features: size of each input token.
            out_features: size of each output (per token, or per sequence when pooled).
            d_model: width inside the encoder; a multiple of `heads`, at least 4 (LayerNorm's minimum).
            heads: attention heads per layer; each attends with d_model / heads features.
            layers: number of encoder layers.
            ff_features: hidden width of each layer's feed-forward block; None for 4 * d_model.
            dropout: dropout inside the encoder layers, in [0, 1).
            pool: "none" (batch, length, out), "mean" or "cls" (batch, out).
            positional: "learned", "sinusoidal" or "none".
            max_len: the longest sequence with positional="learned" (its number of position vectors).
            activation: of the feed-forward blocks, "gelu" or "relu".
        """
        super().__init__()
        owner = "TransformerEncoder"
        self.in_features = check_positive(owner, "in_features", in_features)
        self.out_features = check_positive(owner, "out_features", out_features)
        check_positive(owner, "d_model", d_model)
        check_positive(owner, "heads", heads)
        check_positive(owner, "layers", layers)
        check_positive(owner, "max_len", max_len)
        if ff_features is not None:
            check_positive(owner, "ff_features", ff_features)
        if d_model < MIN_NORM_VALUES:
            # The LayerNorms normalize over d_model features: over 1 or 2 the output is a constant.
            raise ValueError(f"{owner}: d_model must be at least {MIN_NORM_VALUES}, got {d_model}")
        if d_model % heads:
            valid = [h for h in range(1, d_model + 1) if d_model % h == 0 and h <= 2 * heads]
            raise ValueError(
                f"{owner}: d_model ({d_model}) must be divisible by heads ({heads}), since each head gets "
                f"d_model / heads features: use d_model={math.ceil(d_model / heads) * heads}, or heads in "
                f"{valid}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}: dropout must be in [0, 1) (a probability), got {dropout!r}")
        check_choice(owner, "pool", pool, POOLS)
        check_choice(owner, "positional", positional, POSITIONALS)
        check_choice(owner, "activation", activation, ("relu", "gelu"))
        self.d_model, self.pool, self.positional, self.max_len = d_model, pool, positional, max_len

        self.input = nn.Linear(in_features, d_model)
        if positional == "learned":
            self.position = nn.Parameter(torch.empty(max_len, d_model))
            nn.init.trunc_normal_(self.position, std=0.02)
        if pool == "cls":
            self.cls = nn.Parameter(torch.empty(1, 1, d_model))
            nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=ff_features or 4 * d_model,
            dropout=dropout,
            activation=activation,
            batch_first=True,
            norm_first=True,
        )
        # Pre-norm layers leave their output unnormalized: the final LayerNorm does it once. Nested
        # tensors (a speed-up for padded batches in eval) do not support norm_first and would only warn.
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.output = nn.Linear(d_model, out_features)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            x: (batch, length, in_features).
            padding_mask: optional (batch, length) bool, True where a token is padding; each sequence
                needs at least one real token (attention over nothing is undefined).

        Returns:
            (batch, length, out_features) with pool="none", else (batch, out_features).
        """
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"TransformerEncoder expects (batch, length, {self.in_features}), got {tuple(x.shape)}"
            )
        batch, length, _ = x.shape
        if padding_mask is not None and (
            padding_mask.shape != (batch, length) or padding_mask.dtype != torch.bool
        ):
            raise ValueError(
                f"TransformerEncoder: padding_mask must be bool of shape {(batch, length)} (True = padding), "
                f"got {padding_mask.dtype} of shape {tuple(padding_mask.shape)}"
            )
        h = self.input(x)
        if self.positional == "learned":
            if length > self.max_len:
                raise ValueError(
                    f"TransformerEncoder: a sequence of length {length} exceeds max_len={self.max_len} "
                    f"learned positions: raise max_len or use positional='sinusoidal'"
                )
            h = h + self.position[:length]
        elif self.positional == "sinusoidal":
            h = h + sinusoidal_positions(length, self.d_model, h.device, h.dtype)
        if self.pool == "cls":
            h = torch.cat((self.cls.expand(batch, 1, -1), h), dim=1)
            if padding_mask is not None:
                padding_mask = torch.cat((padding_mask.new_zeros(batch, 1), padding_mask), dim=1)
        h = self.encoder(h, src_key_padding_mask=padding_mask)
        if self.pool == "cls":
            h = h[:, 0]
        elif self.pool == "mean":
            if padding_mask is None:
                h = h.mean(dim=1)
            else:
                keep = (~padding_mask).unsqueeze(-1).to(h.dtype)
                h = (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        out: Tensor = self.output(h)
        return out
