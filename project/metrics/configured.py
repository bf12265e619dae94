"""Metrics declared in a config: which metric, which fields. They are logged IN ADDITION to the
built-in `acc` and `f1` (metrics/classification.py), so `val/acc`, the default checkpoint monitor,
is always there:

    model:
      init_args:
        metrics:
          - {name: kappa, fn: torchmetrics.CohenKappa, prediction: logits, target: label}
          - {name: recon_mae, fn: torchmetrics.MeanAbsoluteError, prediction: reconstruction, target: image}

`fn` is a short name of the metrics table (metrics/table.py: `accuracy`, `f1`), built with the run's
number of classes, or the path of a `Metric` class in torchmetrics or this project's package (nothing
else is imported, and only a `Metric` class is called: see terms.py). `args` passes keyword arguments
to it; what the run knows (`num_classes`, `task: multiclass`, `num_labels`) is filled in for a class
that takes it and that `args` leaves out. A class still missing an argument stops the run in one line
naming it.
`prediction` and `target` name fields of the model's `Prediction` and `Example` types, checked when
the model is built. Each metric is logged under its `name` (`val/recon_mae`). A name is logged once:
re-declaring a built-in exactly as it is (`{name: acc, fn: accuracy, prediction: logits, target:
label}`) changes nothing, giving it another meaning is refused.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
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


def run_args(metric_class: type[Metric], num_classes: int, args: dict[str, Any], term: str) -> dict[str, Any]:
    """`args` plus what the run knows, for the constructor parameters that take it; a UserError when a
    required parameter is still missing (else torchmetrics' TypeError comes with a long traceback)."""
    known = {"num_classes": num_classes, "task": "multiclass", "num_labels": num_classes}
    params = inspect.signature(metric_class).parameters
    full = {key: value for key, value in known.items() if key in params} | args
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for param in params.values():
        if param.kind in named and param.default is param.empty and param.name not in full:
            raise UserError(
                f"{term}: {metric_class.__name__} needs {param.name!r}, which the run cannot fill in: "
                f"set it in the metric's args, e.g. args: {{{param.name}: ...}}"
            )
    return full


def spec(config: MetricTermConfig) -> dict[str, Any]:
    """What a metric is, for comparing two declarations (empty `args` is no args)."""
    return {key: value for key, value in config.items() if key != "args" or value}


class ConfiguredMetrics(ExampleMetrics):
    """The `metrics` of a config: each torchmetrics metric fed the fields it names."""

    def __init__(
        self,
        configs: list[MetricTermConfig],
        num_classes: int,
        example_type: type,
        prediction_type: type,
        prefix: str = "",
        builtin: list[MetricTermConfig] | None = None,
    ) -> None:
        """`builtin` metrics come first; `configs` add to them (see the module docstring)."""
        builtin = builtin or []
        metrics: dict[str, Metric | MetricCollection] = {}
        routes: dict[str, tuple[str, str]] = {}
        declared: dict[str, MetricTermConfig] = {}
        for config in [*builtin, *configs]:
            name = config["name"]
            term = f"metric {name!r}"
            check_field(term, "prediction", config["prediction"], prediction_type)
            check_field(term, "target", config["target"], example_type)
            earlier = declared.get(name)
            if earlier is not None:
                if spec(earlier) == spec(config):
                    continue  # the same metric declared twice: logged once
                what = "built-in metric" if any(earlier is b for b in builtin) else "metric"
                raise UserError(
                    f"{term}: the name is taken by the {what} {name!r} ({earlier['fn']} of "
                    f"{earlier['prediction']} vs {earlier['target']}); config metrics are logged besides the "
                    f"built-in acc and f1: give this one another name"
                )
            declared[name] = config
            metrics[name] = self.build(config, num_classes, term)
            routes[name] = (config["prediction"], config["target"])
        # compute_groups=False: each metric gets its own inputs, so none may share state.
        super().__init__(metrics, prefix=prefix, compute_groups=False)
        self.routes = routes

    @staticmethod
    def build(config: MetricTermConfig, num_classes: int, term: str) -> Metric:
        args = dict(config.get("args") or {})
        metric_class = resolve_metric(config["fn"], term)
        make: Callable[..., Any]
        if metric_class is None:
            make = functools.partial(build_metric, config["fn"], num_classes)
        else:
            make, args = metric_class, run_args(metric_class, num_classes, args, term)
        try:  # torchmetrics checks its arguments with ValueError/TypeError: one line, not a traceback
            metric = make(**args)
        except (TypeError, ValueError) as e:
            raise UserError(f"{term}: {config['fn']}: {e} (set in the metric's args)") from None
        if not isinstance(metric, Metric):
            raise UserError(f"{term}: {config['fn']} is not a torchmetrics Metric")
        return metric

    def update_from(self, example: Example, prediction: Prediction) -> None:
        for name, (predicted, target) in self.routes.items():
            self[name].update(getattr(prediction, predicted), getattr(example, target))
