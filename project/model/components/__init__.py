"""Building blocks for models: plain `torch.nn.Module`s, no Lightning, each sized from plain arguments
(ints, tuples, strings) so a model can expose them in its config and checkpoint.

- conv.py    `ConvEncoder2d`, `ConvDecoder2d`: (C, H, W) to an exact (C', H', W'), any sizes
- mlp.py     `MLP`
- shapes.py  the size arithmetic behind the conv plans; layers.py, checks.py: shared helpers
"""

from project.model.components.conv import ConvDecoder2d, ConvEncoder2d
from project.model.components.mlp import MLP

__all__ = ["MLP", "ConvDecoder2d", "ConvEncoder2d"]
