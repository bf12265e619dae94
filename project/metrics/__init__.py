"""Metrics: torchmetrics collections fed by `Example` and `Prediction` (see `ExampleMetrics`)."""

from project.metrics.base import ExampleMetrics
from project.metrics.classification import ClassificationMetrics

__all__ = ["ClassificationMetrics", "ExampleMetrics"]
