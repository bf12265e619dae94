"""Loss terms declared in a config: which function, which fields, which weight.

A model's `losses` list says what trains which output::

    model:
      init_args:
        losses:
          - {name: ce, fn: cross_entropy, prediction: logits, target: label}
          - {name: recon, fn: mse_loss, prediction: reconstruction, target: image, weight: 0.5}

`fn` is a name from `torch.nn.functional` (cross_entropy, mse_loss, l1_loss, ...) or the dotted path
of any loss function or class; `args` passes keyword arguments to it. `prediction` names a field or
property of the model's `Prediction` type and `target` a field of its `Example` type; a wrong name
fails when the model is built, with the list of valid ones. Each term is logged on its own
(`train/loss/recon`). Metrics are declared the same way: see metrics/configured.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NotRequired, TypedDict

from torch import Tensor
from torch.nn import functional as F

from project.errors import UserError
from project.structs import Example, Loss, Prediction
from project.terms import check_field, import_fn


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
            fn = (
                getattr(F, fn_name) if fn_name in LOSS_SHORTCUTS else import_fn(fn_name, term, LOSS_SHORTCUTS)
            )
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
