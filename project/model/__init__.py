"""Models: `BaseModel` holds the loop; each variant adds its layers and `forward`.

Add a model: a new file here with a `BaseModel` subclass, exported below, then name it in a config
(`model.class_path: project.model.MyNet`).
"""

from project.model.autoencoder import AutoencoderClassifier, LatentClassifier, ReconstructionPrediction
from project.model.base import BaseModel
from project.model.convnet import ConvNet
from project.model.fast_cifar import FastCifarNet
from project.model.resnet import CifarResNet

__all__ = [
    "AutoencoderClassifier",
    "BaseModel",
    "CifarResNet",
    "ConvNet",
    "FastCifarNet",
    "LatentClassifier",
    "ReconstructionPrediction",
]
