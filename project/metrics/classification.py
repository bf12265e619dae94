"""The classification metrics every stage logs: top-1 accuracy and macro F1.

`ClassificationMetrics` is a torchmetrics `MetricCollection`: `compute()` syncs it across DDP ranks::

    metrics = ClassificationMetrics(num_classes=10, prefix="val/")
    metrics.update_from(example, prediction)     # every step
    metrics.compute()                            # at epoch end: {"val/acc": ..., "val/f1": ...}

To add a metric, add it to the dict below (any torchmetrics metric fed by logits and labels), or
write an `ExampleMetrics` subclass whose `update_from` reads other fields (see metrics/base.py).
"""

from __future__ import annotations

from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from project.metrics.base import ExampleMetrics
from project.structs import Example, Prediction


class ClassificationMetrics(ExampleMetrics):
    def __init__(self, num_classes: int, prefix: str = "") -> None:
        super().__init__(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            },
            prefix=prefix,
        )

    def update_from(self, example: Example, prediction: Prediction) -> None:
        self.update(prediction.logits, example.require_label())
