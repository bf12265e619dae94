"""The search file of a sweep: what to vary, what to optimize, and with which Optuna sampler and pruner.

    # configs/search/digits.yaml
    objective: val/acc              # a metric the trials log every validation epoch
    direction: maximize             # default: minimize when the name has "loss" or "err", else maximize
    n_trials: 20                    # --n_trials overrides
    sampler: tpe                    # tpe | random | grid | cmaes, or {tpe: {n_startup_trials: 5}}
    pruner: median                  # median | hyperband | none, or {median: {n_warmup_steps: 2}}
    seed: 0                         # the sampler's seed
    params:                         # keyed by the dotted names of the command line
      model.init_args.optimizer.init_args.lr: {float: [1.0e-4, 1.0e-1], log: true}
      model.init_args.hidden: {categorical: [[64], [128]]}
      data.init_args.batch_size: {int: [32, 128], step: 32}

Optuna's distributions take plain values (numbers, strings, booleans, null) as categorical choices; a
list or mapping among the choices is kept as its YAML text, which is what the trial's command line gets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from project.errors import UserError

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
KEYS = {"objective", "direction", "n_trials", "sampler", "pruner", "seed", "study_name", "params"}
KINDS = {"float": {"log", "step"}, "int": {"log", "step"}, "categorical": set()}


@dataclass
class Search:
    """A parsed search file: `params` maps each dotted CLI name to its Optuna distribution."""

    path: Path
    objective: str
    direction: str
    params: dict[str, BaseDistribution]
    sampler: tuple[str, dict[str, Any]] = ("tpe", {})
    pruner: tuple[str, dict[str, Any]] = ("median", {})
    seed: int | None = None
    n_trials: int | None = None
    study_name: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a study is: resuming or joining it with another identity would mix incomparable trials."""
        params = {name: json.loads(distribution_to_json(d)) for name, d in sorted(self.params.items())}
        return {"objective": self.objective, "direction": self.direction, "params": params}

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        name, options = self.sampler
        if name == "grid":
            return Grid(self.grid, seed=self.seed)
        return SAMPLERS[name](**({"seed": self.seed} | options))

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.pruner)


class Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, without its `study.stop()` once every point is visited: that works only
    inside `Study.optimize`; the trial loop asks `is_exhausted` itself (runner.py)."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        pass


def make_pruner(spec: tuple[str, dict[str, Any]] | list[Any]) -> optuna.pruners.BasePruner:
    name, options = spec
    return PRUNERS[name](**options)


def load_search(path: Path) -> Search:
    """Read and check a search file; any problem is one UserError naming the file and the key."""
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"--search {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--search {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(content, dict) or not isinstance(content.get("params"), dict) or not content["params"]:
        raise UserError(f"{path}: needs `params:`, a mapping of dotted option names to distributions")
    if unknown := sorted(set(content) - KEYS):
        raise UserError(f"{path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(KEYS))}")
    objective = content.get("objective", "val/acc")
    if not isinstance(objective, str):
        raise UserError(f"{path}: objective must be a metric name such as val/acc, got {objective!r}")
    minimizing = any(word in objective for word in ("loss", "err"))
    direction = content.get("direction", "minimize" if minimizing else "maximize")
    if direction not in ("minimize", "maximize"):
        raise UserError(f"{path}: direction must be minimize or maximize, got {direction!r}")
    params = {str(name): distribution(path, str(name), spec) for name, spec in content["params"].items()}
    search = Search(
        path=path,
        objective=objective,
        direction=direction,
        params=params,
        sampler=_choice(path, "sampler", content.get("sampler", "tpe"), SAMPLERS),
        pruner=_choice(path, "pruner", content.get("pruner", "median"), PRUNERS),
        seed=_optional_int(path, "seed", content.get("seed"), minimum=0),
        n_trials=_optional_int(path, "n_trials", content.get("n_trials"), minimum=1),
        study_name=content.get("study_name"),
    )
    if search.sampler[0] == "grid":
        search.grid = {name: grid_values(path, name, d) for name, d in params.items()}
    return search


def distribution(path: Path, name: str, spec: Any) -> BaseDistribution:
    """`{float: [low, high], log: true}`, `{int: [low, high], step: 2}` or `{categorical: [a, b]}`."""
    where = f"{path}: params.{name}"
    kinds = [kind for kind in KINDS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise UserError(
            f"{where}: give one of {{float: [low, high]}}, {{int: [low, high]}} or {{categorical: [a, b, "
            f"...]}} (log: true and step: N optional), got {spec!r}"
        )
    (kind,) = kinds
    if extra := sorted(set(spec) - {kind} - KINDS[kind]):
        raise UserError(
            f"{where}: {extra[0]!r} does not go with {kind}; allowed: {sorted(KINDS[kind]) or 'none'}"
        )
    values = spec[kind]
    if kind == "categorical":
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: categorical needs a non-empty list of choices, got {values!r}")
        return CategoricalDistribution([choice_text(v) for v in values])
    number = float if kind == "float" else int
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(_is_number(v, number) for v in values)
        or not values[0] < values[1]
    ):
        raise UserError(f"{where}: {kind} needs [low, high] with {kind} low < high, got {values!r}")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if step is not None and (not _is_number(step, number) or step <= 0):
        raise UserError(f"{where}: step must be a positive {kind}, got {step!r}")
    if log and (step not in (None, 1) or values[0] <= 0):
        raise UserError(f"{where}: log: true needs low > 0 and no step, got {values!r} with step {step!r}")
    try:
        if kind == "float":
            return FloatDistribution(float(values[0]), float(values[1]), log=log, step=step)
        return IntDistribution(int(values[0]), int(values[1]), log=log, step=step or 1)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def choice_text(value: Any) -> Any:
    """A categorical choice as Optuna stores it: plain values as they are, lists and mappings as YAML."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


def grid_values(path: Path, name: str, d: BaseDistribution) -> list[Any]:
    """Every value a grid sampler visits for one parameter: the choices, or a range with a step."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution) and not d.log:
        return list(range(d.low, d.high + 1, d.step))
    if isinstance(d, FloatDistribution) and d.step is not None:
        count = math.floor((d.high - d.low) / d.step + 1e-9) + 1
        return [round(d.low + i * d.step, 12) for i in range(count)]
    raise UserError(
        f"{path}: params.{name}: the grid sampler needs a list: give step: or categorical: choices"
    )


def _choice(path: Path, key: str, value: Any, known: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`median` or `{median: {n_warmup_steps: 2}}` -> ("median", {"n_warmup_steps": 2})."""
    name: Any = value if isinstance(value, str) else None
    options: Any = {} if isinstance(value, str) else None
    if isinstance(value, dict) and len(value) == 1:
        ((name, options),) = value.items()
        options = {} if options is None else options
    if name not in known or not isinstance(options, dict):
        raise UserError(
            f"{path}: {key} must be one of {', '.join(known)} (or {{name: {{options}}}}), got {value!r}"
        )
    try:
        if name == "grid" and options:  # its grid comes from params
            raise ValueError(f"takes no options, got {options}")
        if name != "grid":
            known[name](**options)  # unknown or ill-typed options fail here, not in the first trial
    except (TypeError, ValueError, ImportError) as e:
        raise UserError(f"{path}: {key} {name}: {' '.join(str(e).split())}") from None
    return str(name), options


def _optional_int(path: Path, key: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{path}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _is_number(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))
