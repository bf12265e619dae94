"""`MLP`: dense layers on the last dimension, any leading dimensions::

mlp = MLP(in_features=64, out_features=10, hidden=(128, 128), dropout=0.1, norm="layer")
mlp(torch.randn(8, 64)).shape          # (8, 10)
mlp(torch.randn(8, 20, 64)).shape      # (8, 20, 10): per token
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from torch import Tensor, nn

from project.model.components.checks import check_choice, check_positive
from project.model.components.layers import ACTIVATIONS, MIN_NORM_VALUES, Activation, make_activation

DenseNorm = Literal["batch", "layer", "none"]
DENSE_NORMS: tuple[str, ...] = get_args(DenseNorm)


class MLP(nn.Module):
    """Each hidden layer is Linear -> norm -> activation -> dropout; the last layer is a plain Linear
    (raw outputs: logits, regression targets, a code). With no hidden widths it is one Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (),
        activation: Activation = "relu",
        dropout: float = 0.0,
        norm: DenseNorm = "none",
    ) -> None:
        """
        Args:
            in_features: size of the input's last dimension.
            out_features: size of the output's last dimension.
            hidden: widths of the hidden layers, in order (a list in YAML).
            activation: "relu", "leaky_relu", "gelu", "silu" or "tanh".
            dropout: dropout probability after each hidden activation, in [0, 1).
            norm: "batch" (BatchNorm1d over all leading dimensions), "layer" (LayerNorm, which needs
                hidden widths of at least 4) or "none".
        """
        super().__init__()
        self.in_features = check_positive("MLP", "in_features", in_features)
        self.out_features = check_positive("MLP", "out_features", out_features)
        self.hidden = tuple(check_positive("MLP", f"hidden[{i}]", width) for i, width in enumerate(hidden))
        check_choice("MLP", "activation", activation, ACTIVATIONS)
        check_choice("MLP", "norm", norm, DENSE_NORMS)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1) (a probability), got {dropout!r}")
        if norm == "layer" and any(width < MIN_NORM_VALUES for width in self.hidden):
            # LayerNorm over 1 or 2 features outputs a constant (0, or -1 and +1): nothing gets through.
            raise ValueError(
                f"MLP: norm='layer' needs hidden widths of at least {MIN_NORM_VALUES}, got "
                f"hidden={self.hidden}: widen the layers or use norm='batch' or 'none'"
            )
        layers: list[nn.Module] = []
        width = self.in_features
        for out in self.hidden:
            # BatchNorm subtracts the batch mean, and with it any bias: the Linear does not need one.
            layers.append(nn.Linear(width, out, bias=norm != "batch"))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(out))
            elif norm == "layer":
                layers.append(nn.LayerNorm(out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        layers.append(nn.Linear(width, self.out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects (..., {self.in_features}), got {tuple(x.shape)}")
        # BatchNorm1d wants (N, features): fold every leading dimension into N, then unfold.
        out: Tensor = self.layers(x.reshape(-1, self.in_features))
        return out.reshape(*x.shape[:-1], self.out_features)
