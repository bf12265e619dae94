"""What config-declared loss terms (model/losses.py) and metrics (metrics/configured.py) share:
checking the struct fields a term names, and finding the function or class its `fn` names."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from project.errors import UserError


def field_names(kind: type) -> list[str]:
    """A struct's readable names: its dataclass fields and its properties."""
    names = [f.name for f in dataclasses.fields(kind)]
    names += [name for name, value in inspect.getmembers(kind) if isinstance(value, property)]
    return sorted(set(names))


def check_field(term: str, role: str, name: str, kind: type) -> None:
    valid = field_names(kind)
    if name not in valid:
        raise UserError(f"{term}: {role} {name!r} is not a field of {kind.__name__}; valid names: {valid}")


def import_fn(path: str, term: str, shortcuts: list[str]) -> Any:
    """The object a dotted `fn` path names, or a UserError listing the short names."""
    module, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        raise UserError(
            f"{term}: fn {path!r} is neither one of {shortcuts} nor an importable dotted path "
            f"(e.g. torch.nn.functional.huber_loss, torchmetrics.MeanSquaredError)"
        ) from None
