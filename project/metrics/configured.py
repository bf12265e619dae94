"""Metrics declared in a config: which metric, which fields.

    model:
      init_args:
        metrics:
          - {name: acc, fn: accuracy, prediction: logits, target: label}
          - {name: recon_mae, fn: torchmetrics.MeanAbsoluteError, prediction: reconstruction, target: image}

`fn` is a short name of the metrics table (metrics/table.py: `accuracy`, `f1`), built with the run's
number of classes, or the path of a `Metric` class in torchmetrics or this project's package (nothing
else is imported, and only a `Metric` class is called: see terms.py); `args` passes keyword arguments
to it.
`prediction` and `target` name fields of the model's `Prediction` and `Example` types, checked when
the model is built. Each metric is logged under its `name` (`val/recon_mae`).
"""

from __future__ import annotations

import inspect
from typing import Any, NotRequired, TypedDict

from torchmetrics import Metric, MetricCollection

from project.errors import UserError
from project.metrics.base import ExampleMetrics
from project.metrics.table import METRICS, build_metric
from project.structs import Example, Prediction
from project.terms import PACKAGE, check_field, import_fn

# Where a dotted metric `fn` may point: checked before anything is imported.
METRIC_NAMESPACES = ("torchmetrics", PACKAGE)


def is_metric_class(found: Any) -> bool:
    return inspect.isclass(found) and issubclass(found, Metric)


def resolve_metric(fn_name: Any, term: str) -> type[Metric] | None:
    """The Metric class a term's dotted `fn` names (None for a short name of the metrics table),
    refused before any import outside METRIC_NAMESPACES and before any call of a non-Metric."""
    if isinstance(fn_name, str) and fn_name in METRICS:
        return None
    found: type[Metric] = import_fn(
        fn_name, term, sorted(METRICS), METRIC_NAMESPACES, is_metric_class, "a torchmetrics Metric class"
    )
    return found


class MetricTermConfig(TypedDict):
    name: str
    fn: str
    prediction: str
    target: str
    args: NotRequired[dict[str, Any]]


class ConfiguredMetrics(ExampleMetrics):
    """The `metrics` of a config: each torchmetrics metric fed the fields it names."""

    def __init__(
        self,
        configs: list[MetricTermConfig],
        num_classes: int,
        example_type: type,
        prediction_type: type,
        prefix: str = "",
    ) -> None:
        metrics: dict[str, Metric | MetricCollection] = {}
        routes: dict[str, tuple[str, str]] = {}
        for config in configs:
            name = config["name"]
            term = f"metric {name!r}"
            check_field(term, "prediction", config["prediction"], prediction_type)
            check_field(term, "target", config["target"], example_type)
            args = config.get("args", {})
            metric_class = resolve_metric(config["fn"], term)
            if metric_class is None:
                metric = build_metric(config["fn"], num_classes, **args)
            else:
                metric = metric_class(**args)
            if not isinstance(metric, Metric):
                raise UserError(f"{term}: {config['fn']} is not a torchmetrics Metric")
            metrics[name] = metric
            routes[name] = (config["prediction"], config["target"])
        # compute_groups=False: each metric gets its own inputs, so none may share state.
        super().__init__(metrics, prefix=prefix, compute_groups=False)
        self.routes = routes

    def update_from(self, example: Example, prediction: Prediction) -> None:
        for name, (predicted, target) in self.routes.items():
            self[name].update(getattr(prediction, predicted), getattr(example, target))
