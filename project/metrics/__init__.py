"""Metrics: torchmetrics collections fed by `Example` and `Prediction`.

base.py (`ExampleMetrics`, what BaseModel updates), table.py (metrics by short name),
classification.py (the built-in `acc` and `f1`), configured.py (metrics declared in a config, logged
besides the built-in ones), loss_means.py (the epoch means of the logged losses).
"""

from project.metrics.base import ExampleMetrics
from project.metrics.classification import BUILTIN_METRICS, ClassificationMetrics
from project.metrics.configured import ConfiguredMetrics, MetricTermConfig
from project.metrics.loss_means import LossMeans
from project.metrics.table import METRICS, build_metric

__all__ = [
    "BUILTIN_METRICS",
    "METRICS",
    "ClassificationMetrics",
    "ConfiguredMetrics",
    "ExampleMetrics",
    "LossMeans",
    "MetricTermConfig",
    "build_metric",
]
