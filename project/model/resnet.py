"""`CifarResNet`: torchvision's ResNet-18 adapted to 32x32 inputs.

The ImageNet stem (7x7 stride-2 convolution + max-pool) would shrink a 32x32 image to 8x8 before
the first block; the usual CIFAR adaptation replaces it with one 3x3 stride-1 convolution and no
pooling. About 11 M parameters; ~95 % CIFAR-10 test accuracy with SGD + one-cycle in ~30 epochs on
a GPU, ~18 img/s on a 2-core CPU (use `configs/digits.yaml` there).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from project.errors import UserError
from project.model.base import BaseModel
from project.structs import Example, Prediction


class CifarResNet(BaseModel[Example, Prediction]):
    """A ResNet-18/34 classifier for 32x32 images (CIFAR-10): set depth; train it on a GPU.

    torchvision's ResNet with the ImageNet stem replaced by one 3x3 stride-1 convolution."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        depth: int = 18,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: input (channels, height, width) (linked from the DataModule).
            depth: 18 or 34 (torchvision's basic-block ResNets).
            **kwargs: optimizer settings, see `BaseModel`.
        """
        super().__init__(num_classes, in_shape, **kwargs)
        from torchvision.models import resnet18, resnet34  # imported here: keeps `--help` fast

        builders = {18: resnet18, 34: resnet34}
        if depth not in builders:
            raise UserError(f"depth must be one of {sorted(builders)}, got {depth}")
        net = builders[depth](weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.net = net

    def forward(self, example: Example) -> Prediction:
        return Prediction(logits=self.net(example.image))
