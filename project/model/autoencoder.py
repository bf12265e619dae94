"""`LatentClassifier` and `AutoencoderClassifier`: models assembled from the shape-driven builders.

`LatentClassifier` encodes an image to a small latent vector (`ConvEncoder2d`) and classifies it
(`MLP`). `AutoencoderClassifier` adds only a decoder (`ConvDecoder2d`) back to the image, so its
`Prediction` has a `reconstruction` too, and it trains both heads with the loss terms its config
lists (configs/digits_ae.yaml: cross-entropy + 0.5 x MSE). Both name their encoder `encoder`, so a
`LatentClassifier` can start from an autoencoder's encoder, frozen (`pretrained` in BaseModel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from project.model.base import BaseModel
from project.model.components import MLP, ConvDecoder2d, ConvEncoder2d
from project.model.losses import LossTermConfig
from project.structs import Example, Prediction


@dataclass
class ReconstructionPrediction(Prediction):
    reconstruction: Tensor | None = None
    """(B, C, H, W) the input image as the decoder rebuilds it (normalized like the input)."""


class LatentClassifier(BaseModel[Example, Prediction]):
    """A classifier of a small latent code (conv encoder + MLP): set latent, hidden, pretrained.

    Its `encoder` can start from an AutoencoderClassifier's, frozen (`pretrained`)."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        latent: int = 32,
        hidden: tuple[int, ...] = (64,),
        **kwargs: Any,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: input (channels, height, width) (linked from the DataModule).
            latent: size of the latent vector the encoder produces.
            hidden: widths of the classifier MLP's hidden layers.
            **kwargs: optimizer, losses, metrics and pretrained settings, see `BaseModel`.
        """
        super().__init__(num_classes, in_shape, **kwargs)
        self.encoder = ConvEncoder2d(in_shape=in_shape, out_shape=(latent, 1, 1))
        self.classifier = MLP(in_features=latent, out_features=num_classes, hidden=list(hidden))

    def forward(self, example: Example) -> Prediction:
        return Prediction(logits=self.classifier(self.encoder(example.image).flatten(1)))


DEFAULT_AE_LOSSES: list[LossTermConfig] = [
    {"name": "ce", "fn": "cross_entropy", "prediction": "logits", "target": "label"},
    {"name": "recon", "fn": "mse_loss", "prediction": "reconstruction", "target": "image", "weight": 0.5},
]


class AutoencoderClassifier(LatentClassifier):
    """A classifier that also rebuilds its input (encoder, decoder, MLP): set latent, losses, metrics.

    Trained by weighted loss terms: by default cross-entropy + 0.5 x MSE of reconstruction vs image."""

    prediction_type = ReconstructionPrediction

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        latent: int = 32,
        losses: list[LossTermConfig] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: input (channels, height, width) (linked from the DataModule).
            latent: size of the latent vector between encoder and decoder.
            losses: loss terms (default: cross-entropy on logits + 0.5 x MSE of reconstruction vs image).
            **kwargs: classifier widths and `BaseModel` settings.
        """
        losses = DEFAULT_AE_LOSSES if losses is None else losses
        super().__init__(num_classes, in_shape, latent=latent, losses=losses, **kwargs)
        self.decoder = ConvDecoder2d(in_shape=(latent, 1, 1), out_shape=in_shape)

    def forward(self, example: Example) -> ReconstructionPrediction:
        z = self.encoder(example.image)
        return ReconstructionPrediction(logits=self.classifier(z.flatten(1)), reconstruction=self.decoder(z))
