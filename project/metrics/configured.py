"""Metrics declared in a config: which metric, which fields.

    model:
      init_args:
        metrics:
          - {name: acc, fn: accuracy, prediction: logits, target: label}
          - {name: recon_mae, fn: torchmetrics.MeanAbsoluteError, prediction: reconstruction, target: image}

`fn` is a short name of the metrics table (metrics/table.py: `accuracy`, `f1`), built with the run's
number of classes, or a torchmetrics `Metric` class path; `args` passes keyword arguments to it.
`prediction` and `target` name fields of the model's `Prediction` and `Example` types, checked when
the model is built. Each metric is logged under its `name` (`val/recon_mae`).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from torchmetrics import Metric, MetricCollection

from project.errors import UserError
from project.metrics.base import ExampleMetrics
from project.metrics.table import METRICS, build_metric
from project.structs import Example, Prediction
from project.terms import check_field, import_fn


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
            if config["fn"] in METRICS:
                metric = build_metric(config["fn"], num_classes, **args)
            else:
                metric = import_fn(config["fn"], term, sorted(METRICS))(**args)
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
