"""`ConvNet`: the small LeNet-style network a user writes first (conv-pool blocks, then dense layers).

Sizes adapt to the input: 3x3 convolutions keep the spatial size, each block halves it (down to
1x1), and the first dense layer's width is traced from `in_shape`. Fast on CPU; the digits demo
reaches about 99 % validation accuracy in seconds.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from project.model.base import BaseModel
from project.structs import Example, Prediction


class ConvNet(BaseModel[Example, Prediction]):
    """A small CNN classifier (conv-pool blocks, then dense layers): set channels, hidden, dropout.

    Fast on a CPU; the right first choice for small images such as the 8x8 digits."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        channels: tuple[int, ...] = (32, 64),
        hidden: tuple[int, ...] = (128,),
        dropout: float = 0.25,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: input (channels, height, width) (linked from the DataModule).
            channels: output channels of each conv-ReLU-maxpool block.
            hidden: widths of the dense layers before the classifier.
            dropout: dropout before each dense layer.
            **kwargs: optimizer settings, see `BaseModel`.
        """
        super().__init__(num_classes, in_shape, **kwargs)
        layers: list[nn.Module] = []
        in_ch, size = in_shape[0], min(in_shape[1:])
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            in_ch = out_ch
        self.features = nn.Sequential(*layers, nn.Flatten())
        width = self.flat_features(self.features, self.in_shape)
        dense: list[nn.Module] = []
        for h in hidden:
            dense += [nn.Dropout(dropout), nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.classifier = nn.Sequential(*dense, nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, example: Example) -> Prediction:
        return Prediction(logits=self.classifier(self.features(example.image)))
