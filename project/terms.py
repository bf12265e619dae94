"""What config-declared loss terms (model/losses.py) and metrics (metrics/configured.py) share:
checking the struct fields a term names, and finding the function or class its `fn` names.

A term's `fn` may come from a file the user did not write (a checkpoint's hyper-parameters), so a
dotted path resolves only inside the namespaces a term allows (`torch.nn.functional`, `torch.nn`,
`torchmetrics`, this project's own package), checked before anything is imported; what it names
must then be of the kind the term calls (a loss function or module class, a `Metric` class) before
it is called. `os.system` or a module whose import has effects is refused, and nothing runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from project.errors import UserError

# This project's own package: "project", or whatever the template was renamed to.
PACKAGE = __name__.partition(".")[0]
# Dotted names of public attributes only: no `_private` part, no spaces or other characters.
DOTTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")


def field_names(kind: type) -> list[str]:
    """A struct's readable names: its dataclass fields and its properties."""
    names = [f.name for f in dataclasses.fields(kind)]
    names += [name for name, value in inspect.getmembers(kind) if isinstance(value, property)]
    return sorted(set(names))


def check_field(term: str, role: str, name: str, kind: type) -> None:
    valid = field_names(kind)
    if name not in valid:
        raise UserError(f"{term}: {role} {name!r} is not a field of {kind.__name__}; valid names: {valid}")


def inside(path: str, namespaces: tuple[str, ...]) -> bool:
    """Whether the dotted `path` names something inside one of `namespaces` (by its text alone)."""
    return any(path == namespace or path.startswith(f"{namespace}.") for namespace in namespaces)


def check_path(path: Any, term: str, namespaces: tuple[str, ...], shortcuts: list[str]) -> str:
    """`path` if it is a dotted path inside `namespaces`, else a UserError; nothing is imported."""
    if not isinstance(path, str) or not DOTTED.fullmatch(path) or not inside(path, namespaces):
        raise UserError(
            f"{term}: fn {path!r} is neither one of {shortcuts} nor a dotted path inside "
            f"{', '.join(namespaces)} (e.g. torch.nn.functional.huber_loss, torchmetrics.MeanSquaredError); "
            f"nothing else is imported or called"
        )
    return path


def import_fn(
    path: Any,
    term: str,
    shortcuts: list[str],
    namespaces: tuple[str, ...],
    accept: Callable[[Any], bool],
    kind: str,
) -> Any:
    """The object a dotted `fn` path names, or a UserError listing the short names.

    The path is checked against `namespaces` before its module is imported, and the object (defined
    inside `namespaces` too, not merely imported there) against `accept` before anyone calls it."""
    module, _, attribute = check_path(path, term, namespaces, shortcuts).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        raise UserError(
            f"{term}: fn {path!r} is neither one of {shortcuts} nor an importable dotted path "
            f"(e.g. torch.nn.functional.huber_loss, torchmetrics.MeanSquaredError)"
        ) from None
    home = getattr(found, "__module__", None)
    if not (isinstance(home, str) and inside(home, namespaces) and accept(found)):
        raise UserError(f"{term}: fn {path!r} is not {kind}; it is refused and not called")
    return found
