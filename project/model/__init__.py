"""Models: `BaseModel` (base.py) holds the loop; each variant adds its layers and `forward`:
`ConvNet`, `CifarResNet`, `FastCifarNet`, `LatentClassifier`/`AutoencoderClassifier`, and `MLPNet` for
feature vectors. losses.py reads loss terms from a config, pretrained.py loads sub-modules from
earlier runs, components/ holds the plain `nn.Module` builders."""

from project.model.autoencoder import AutoencoderClassifier, LatentClassifier, ReconstructionPrediction
from project.model.base import BaseModel
from project.model.convnet import ConvNet
from project.model.fast_cifar import FastCifarNet
from project.model.mlp import MLPNet
from project.model.resnet import CifarResNet

__all__ = [
    "AutoencoderClassifier",
    "BaseModel",
    "CifarResNet",
    "ConvNet",
    "FastCifarNet",
    "LatentClassifier",
    "MLPNet",
    "ReconstructionPrediction",
]
