"""Argument checks shared by the builders: each raises one ValueError that names the builder, says
what is wrong and how to fix it.

Builders take plain values from YAML, where a typo or a `0` is easy to make and a bool is an int::

    check_positive("MLP", "in_features", 0)
    # ValueError: MLP: in_features must be a positive int, got 0
    check_choice("MLP", "norm", "bn", ("batch", "layer", "none"))
    # ValueError: MLP: norm must be one of 'batch', 'layer', 'none', got 'bn'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def is_int(value: object) -> bool:
    # bool is a subclass of int, but `True` for a size is a config mistake, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive(owner: str, name: str, value: object) -> int:
    """`value` itself, once it is known to be an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def check_choice(owner: str, name: str, value: object, choices: Iterable[str]) -> None:
    options = tuple(choices)
    if value not in options:
        listed = ", ".join(repr(option) for option in options)
        raise ValueError(f"{owner}: {name} must be one of {listed}, got {value!r}")


def check_shape(owner: str, name: str, shape: Sequence[int], axes: Sequence[str]) -> tuple[int, ...]:
    """`shape` as a tuple, once it is known to hold one positive int per axis.

    A list is accepted too: that is what a YAML config gives."""
    values = tuple(shape)
    if len(values) != len(axes) or not all(is_int(v) and v >= 1 for v in values):
        raise ValueError(
            f"{owner}: {name} must be {len(axes)} positive ints ({', '.join(axes)}), got {tuple(shape)!r}"
        )
    return values
