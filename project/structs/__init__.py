"""Typed data that flows through the pipeline: `Example` in, `Prediction` out, `Loss` to minimize."""

from project.structs.example import Example
from project.structs.loss import Loss
from project.structs.prediction import Prediction

__all__ = ["Example", "Loss", "Prediction"]
