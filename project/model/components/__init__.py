"""Building blocks for models: plain `torch.nn.Module`s, no Lightning, each sized from plain arguments
(ints, tuples, strings) so a variant can expose them in its config and checkpoint::

    from project.model.components import MLP, ConvEncoder2d

    class MyNet(BaseModel[Example, Prediction]):
        def __init__(self, num_classes: int, in_shape: tuple[int, int, int], width: int = 64, **kwargs: Any):
            super().__init__(num_classes, in_shape, **kwargs)
            self.features = ConvEncoder2d(in_shape, out_shape=(width, 1, 1))
            self.head = MLP(width, num_classes, hidden=(width,))

        def forward(self, example: Example) -> Prediction:
            return Prediction(logits=self.head(self.features(example.image).flatten(1)))

- conv.py         `ConvEncoder2d`, `ConvDecoder2d`, `ConvEncoder1d`, `ConvDecoder1d`: exact shapes, any sizes
- mlp.py          `MLP`
- residual.py     `ResidualStack`: shape-preserving residual conv blocks, 1D or 2D
- transformer.py  `TransformerEncoder`: tokens in, tokens or one pooled vector out
- shapes.py       the size arithmetic behind the conv plans; layers.py, checks.py: shared helpers
"""

from project.model.components.conv import ConvDecoder1d, ConvDecoder2d, ConvEncoder1d, ConvEncoder2d
from project.model.components.mlp import MLP
from project.model.components.residual import ResidualStack
from project.model.components.transformer import TransformerEncoder

__all__ = [
    "MLP",
    "ConvDecoder1d",
    "ConvDecoder2d",
    "ConvEncoder1d",
    "ConvEncoder2d",
    "ResidualStack",
    "TransformerEncoder",
]
