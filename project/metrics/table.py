"""The metrics known by a short name, each built for a number of classes. Both the built-in
`ClassificationMetrics` and config-declared metrics (`fn: accuracy`) build from this one table, so a
name means one metric everywhere: `accuracy` (logged as `acc`) is top-1 accuracy over samples
(torchmetrics' "micro" average), not the mean of per-class accuracies that torchmetrics'
`MulticlassAccuracy` computes by default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

METRICS: dict[str, Callable[..., Metric]] = {
    "accuracy": lambda num_classes, **kw: MulticlassAccuracy(num_classes, **({"average": "micro"} | kw)),
    "f1": lambda num_classes, **kw: MulticlassF1Score(num_classes, **({"average": "macro"} | kw)),
}


def build_metric(name: str, num_classes: int, **args: Any) -> Metric:
    return METRICS[name](num_classes, **args)
