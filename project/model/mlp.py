"""`MLPNet`: dense layers over the flattened input, the model for feature vectors (tabular data).

Built from the `MLP` component; only `__init__` and `forward` differ from `BaseModel`. Any input
shape works: (13,) wine measurements as they are, an image flattened to C*H*W (a baseline).
`configs/wine.yaml` trains it on the wine data.
"""

from __future__ import annotations

import math
from typing import Any

from project.model.base import BaseModel
from project.model.components.layers import Activation
from project.model.components.mlp import MLP, DenseNorm
from project.structs import Example, Prediction


class MLPNet(BaseModel[Example, Prediction]):
    """A feature-vector classifier (an MLP on the flattened input): set hidden, activation, dropout, norm."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, ...],
        hidden: tuple[int, ...] = (64,),
        activation: Activation = "relu",
        dropout: float = 0.0,
        norm: DenseNorm = "none",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: shape of one input, e.g. (13,) (linked from the DataModule's input_shape).
            hidden: widths of the hidden layers, in order (a list in YAML; empty: a linear classifier).
            activation: "relu", "leaky_relu", "gelu", "silu" or "tanh".
            dropout: dropout probability after each hidden activation, in [0, 1).
            norm: "batch", "layer" or "none", after each hidden Linear.
            **kwargs: optimizer settings, see `BaseModel`.
        """
        super().__init__(num_classes, in_shape, **kwargs)
        self.mlp = MLP(math.prod(in_shape), num_classes, hidden, activation, dropout, norm)

    def forward(self, example: Example) -> Prediction:
        return Prediction(logits=self.mlp(example.image.flatten(1)))
