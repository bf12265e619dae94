"""Metrics, each a torchmetrics collection fed by `Example` and `Prediction`."""

from project.metrics.classification import ClassificationMetrics

__all__ = ["ClassificationMetrics"]
