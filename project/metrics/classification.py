"""The classification metrics every model logs: `acc` (top-1 accuracy over samples) and `f1` (macro
F1), built from the metrics table (metrics/table.py). A config's `metrics` add to these (see
metrics/configured.py)::

    metrics = ClassificationMetrics(num_classes=10, prefix="val/")
    metrics.update_from(example, prediction)     # every step
    metrics.compute()                            # at epoch end: {"val/acc": ..., "val/f1": ...}
"""

from __future__ import annotations

from torchmetrics import Metric, MetricCollection

from project.metrics.base import ExampleMetrics
from project.metrics.configured import MetricTermConfig
from project.metrics.table import build_metric
from project.structs import Example, Prediction

# The built-in metrics, written as a config would declare them.
BUILTIN_METRICS: list[MetricTermConfig] = [
    {"name": "acc", "fn": "accuracy", "prediction": "logits", "target": "label"},
    {"name": "f1", "fn": "f1", "prediction": "logits", "target": "label"},
]


class ClassificationMetrics(ExampleMetrics):
    """The built-in metrics, computed together from one update (logits and labels)."""

    def __init__(self, num_classes: int, prefix: str = "") -> None:
        metrics: dict[str, Metric | MetricCollection] = {
            config["name"]: build_metric(config["fn"], num_classes) for config in BUILTIN_METRICS
        }
        super().__init__(metrics, prefix=prefix)

    def update_from(self, example: Example, prediction: Prediction) -> None:
        self.update(prediction.logits, example.require_label())
