"""`Loss`: named loss terms, each with a weight; `total` is what the optimizer minimizes.

    loss = Loss({"ce": ce, "mse": mse}, weights={"mse": 0.1})   # unweighted terms count 1.0
    loss.total                      # ce + 0.1 * mse
    loss.log_dict("train")          # {"train/loss": total, "train/loss/ce": ce, "train/loss/mse": mse}
    Loss({"ce": ce}).log_dict("train")   # {"train/loss": ce}: one unweighted term is the total

Terms are logged unweighted, so changing a weight does not change how a term's curve reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Loss:
    terms: dict[str, Tensor]
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("Loss needs at least one term")
        unknown = sorted(set(self.weights) - set(self.terms))
        if unknown:
            raise ValueError(f"Loss weights name unknown terms {unknown}; the terms are {sorted(self.terms)}")
        for name, value in self.terms.items():
            if value.ndim != 0:
                raise ValueError(f"Loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")

    def weight(self, name: str) -> float:
        return self.weights.get(name, 1.0)

    @property
    def total(self) -> Tensor:
        terms = iter(self.terms.items())
        name, value = next(terms)
        total = self.weight(name) * value
        for name, value in terms:
            total = total + self.weight(name) * value
        return total

    def log_dict(self, stage: str) -> dict[str, Tensor]:
        """Flat metric names for `LightningModule.log_dict`: the total and every unweighted term, or
        the total alone when it is a single term of weight 1 (the same curve twice costs a log call)."""
        total = {f"{stage}/loss": self.total}
        if len(self.terms) == 1 and self.weight(next(iter(self.terms))) == 1.0:
            return total
        return total | {f"{stage}/loss/{k}": v for k, v in self.terms.items()}
