"""Loss terms declared in a config: which function, which fields, which weight.

A model's `losses` list says what trains which output::

    model:
      init_args:
        losses:
          - {name: ce, fn: cross_entropy, prediction: logits, target: label}
          - {name: recon, fn: mse_loss, prediction: reconstruction, target: image, weight: 0.5}

`fn` is a name from `torch.nn.functional` (cross_entropy, mse_loss, l1_loss, ...) or the dotted path
of a loss function or `nn.Module` class in `torch.nn.functional`, `torch.nn` or this project's package
(nothing else is imported: see terms.py); `args` passes keyword arguments to it. `prediction` names a field or
property of the model's `Prediction` type and `target` a field of its `Example` type; a wrong name
fails when the model is built, with the list of valid ones. Each term is logged on its own
(`train/loss/recon`). Metrics are declared the same way: see metrics/configured.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NotRequired, TypedDict, cast

from torch import Tensor, nn
from torch.nn import functional as F

from project.errors import UserError
from project.structs import Example, Loss, Prediction
from project.terms import PACKAGE, check_field, import_fn


class LossTermConfig(TypedDict):
    name: str
    fn: str
    prediction: str
    target: str
    weight: NotRequired[float]
    args: NotRequired[dict[str, Any]]


LOSS_SHORTCUTS = sorted(
    name for name, value in vars(F).items() if name.endswith("_loss") or name in ("cross_entropy", "nll_loss")
)
# Where a dotted loss `fn` may point: checked before anything is imported.
LOSS_NAMESPACES = ("torch.nn.functional", "torch.nn", PACKAGE)


def is_loss(found: Any) -> bool:
    """A loss function, or an `nn.Module` class (built with `args`, then called on each batch)."""
    if inspect.isclass(found):
        return issubclass(found, nn.Module)
    return inspect.isfunction(found) or inspect.isbuiltin(found)


def resolve_loss(fn_name: Any, term: str) -> Any:
    """The loss function or class a term's `fn` names, refused before any import outside
    LOSS_NAMESPACES and before any call of something that is not a loss."""
    if isinstance(fn_name, str) and fn_name in LOSS_SHORTCUTS:
        return getattr(F, fn_name)
    return import_fn(
        fn_name, term, LOSS_SHORTCUTS, LOSS_NAMESPACES, is_loss, "a loss function or nn.Module class"
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
            check_field(term, "prediction", config["prediction"], prediction_type)
            check_field(term, "target", config["target"], example_type)
            fn_name, args = config["fn"], config.get("args", {})
            found = resolve_loss(fn_name, term)
            fn: Callable[[Tensor, Tensor], Tensor]
            if inspect.isclass(found):
                fn = cast(Callable[[Tensor, Tensor], Tensor], found(**args))  # an nn.Module: is_loss
            else:
                fn = _bind(found, args) if args else found
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
