"""Loss terms and metrics declared in a config: which function, which fields, which weight.

A model's `losses` (and `metrics`) list says what trains (and measures) which output::

    model:
      init_args:
        losses:
          - {name: ce, fn: cross_entropy, prediction: logits, target: label}
          - {name: recon, fn: mse_loss, prediction: reconstruction, target: image, weight: 0.5}
        metrics:
          - {name: acc, fn: accuracy, prediction: logits, target: label}
          - {name: recon_mae, fn: torchmetrics.MeanAbsoluteError, prediction: reconstruction, target: image}

`fn` is a name from `torch.nn.functional` (cross_entropy, mse_loss, l1_loss, ...) or the dotted
path of any callable or loss class; for metrics, a short name below or a torchmetrics class path.
`args` passes keyword arguments to it. `prediction` names a field or property of the model's
`Prediction` type and `target` a field of its `Example` type; a wrong name fails when the model is
built, with the list of valid ones. Each term is logged on its own (`train/loss/recon`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any, NotRequired, TypedDict

from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from project.errors import UserError
from project.metrics import ExampleMetrics
from project.structs import Example, Loss, Prediction


class LossTermConfig(TypedDict):
    name: str
    fn: str
    prediction: str
    target: str
    weight: NotRequired[float]
    args: NotRequired[dict[str, Any]]


class MetricTermConfig(TypedDict):
    name: str
    fn: str
    prediction: str
    target: str
    args: NotRequired[dict[str, Any]]


# Metric short names, built with the model's number of classes.
METRICS: dict[str, Callable[..., Metric]] = {
    "accuracy": lambda num_classes, **kw: MulticlassAccuracy(num_classes, **kw),
    "f1": lambda num_classes, **kw: MulticlassF1Score(num_classes, average="macro", **kw),
}


def field_names(kind: type) -> list[str]:
    """A struct's readable names: its dataclass fields and its properties."""
    names = [f.name for f in dataclasses.fields(kind)]
    names += [name for name, value in inspect.getmembers(kind) if isinstance(value, property)]
    return sorted(set(names))


def _check_field(term: str, role: str, name: str, kind: type) -> None:
    valid = field_names(kind)
    if name not in valid:
        raise UserError(f"{term}: {role} {name!r} is not a field of {kind.__name__}; valid names: {valid}")


def _import(path: str, term: str, shortcuts: list[str]) -> Any:
    module, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        raise UserError(
            f"{term}: fn {path!r} is neither one of {shortcuts} nor an importable dotted path "
            f"(e.g. torch.nn.functional.huber_loss, torchmetrics.MeanSquaredError)"
        ) from None


LOSS_SHORTCUTS = sorted(
    name for name, value in vars(F).items() if name.endswith("_loss") or name in ("cross_entropy", "nll_loss")
)


class LossTerms:
    """The `losses` of a config, checked against the model's structs, computing a `Loss`."""

    def __init__(self, configs: list[LossTermConfig], example_type: type, prediction_type: type) -> None:
        if not configs:
            raise UserError("losses: give at least one term")
        self.terms: list[tuple[str, Callable[[Tensor, Tensor], Tensor], str, str]] = []
        self.weights: dict[str, float] = {}
        for config in configs:
            name = config["name"]
            term = f"loss {name!r}"
            if name in self.weights:
                raise UserError(f"{term} is listed twice; loss names must be unique")
            _check_field(term, "prediction", config["prediction"], prediction_type)
            _check_field(term, "target", config["target"], example_type)
            fn_name, args = config["fn"], config.get("args", {})
            fn = getattr(F, fn_name) if fn_name in LOSS_SHORTCUTS else _import(fn_name, term, LOSS_SHORTCUTS)
            if inspect.isclass(fn):
                fn = fn(**args)
            elif args:
                fn = _bind(fn, args)
            self.terms.append((name, fn, config["prediction"], config["target"]))
            self.weights[name] = float(config.get("weight", 1.0))

    def __call__(self, example: Example, prediction: Prediction) -> Loss:
        values = {}
        for name, fn, predicted, target in self.terms:
            values[name] = fn(getattr(prediction, predicted), getattr(example, target))
        return Loss(values, weights=self.weights)


def _bind(fn: Callable[..., Tensor], args: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    def bound(prediction: Tensor, target: Tensor) -> Tensor:
        return fn(prediction, target, **args)

    return bound


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
            _check_field(term, "prediction", config["prediction"], prediction_type)
            _check_field(term, "target", config["target"], example_type)
            args = config.get("args", {})
            if config["fn"] in METRICS:
                metric = METRICS[config["fn"]](num_classes, **args)
            else:
                metric = _import(config["fn"], term, sorted(METRICS))(**args)
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
