"""The classification metrics every stage logs by default: `acc` (top-1 accuracy over samples) and
`f1` (macro F1), built from the metrics table (metrics/table.py)::

    metrics = ClassificationMetrics(num_classes=10, prefix="val/")
    metrics.update_from(example, prediction)     # every step
    metrics.compute()                            # at epoch end: {"val/acc": ..., "val/f1": ...}
"""

from __future__ import annotations

from torchmetrics import Metric, MetricCollection

from project.metrics.base import ExampleMetrics
from project.metrics.table import build_metric
from project.structs import Example, Prediction


class ClassificationMetrics(ExampleMetrics):
    def __init__(self, num_classes: int, prefix: str = "") -> None:
        metrics: dict[str, Metric | MetricCollection] = {
            "acc": build_metric("accuracy", num_classes),
            "f1": build_metric("f1", num_classes),
        }
        super().__init__(metrics, prefix=prefix)

    def update_from(self, example: Example, prediction: Prediction) -> None:
        self.update(prediction.logits, example.require_label())
