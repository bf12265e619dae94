"""What a study leaves in its directory, rewritten from the study's storage whenever a tune process ends:

    runs/<study>/trials.csv   number, state, objective value, parameters, duration, run directory, error
    runs/<study>/best.yaml    the best trial's whole config: `python -m project fit --config
                              runs/<study>/best.yaml` repeats it as a plain fit
    runs/<study>/plots/       Optuna's matplotlib views: optimization history, parameter importances,
                              parallel coordinates, intermediate values (per-epoch objective)

Only rank-free, storage-derived files: rewriting them is always safe, and every file lands whole.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from project.files import atomic_write
from project.sweep.runner import ERROR, RUN_DIR, counted
from project.sweep.space import Search


def write_results(study: optuna.Study, search: Search, study_dir: Path, base_root: str | None) -> list[str]:
    """Write trials.csv, best.yaml and the plots; return a line for each that could not be drawn."""
    trials = study.get_trials(deepcopy=False)
    write_trials_csv(trials, search, study_dir / "trials.csv")
    best = best_trial(study)
    if best is not None:
        write_best_config(best, search, study_dir / "best.yaml", base_root)
    return write_plots(study, study_dir / "plots")


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def write_trials_csv(trials: list[FrozenTrial], search: Search, path: Path) -> None:
    names = list(search.params)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", search.objective, *names, "duration_s", "run_dir", "note"])
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        state = t.state.name.lower()
        note = t.user_attrs.get(ERROR, "")
        if t.state == TrialState.FAIL and not counted(t):
            note = "interrupted (not counted; its parameters were queued again)"
        row = [t.number, state, t.value, *(t.params.get(n) for n in names)]
        writer.writerow([*row, None if duration is None else round(duration, 1), _shown_path(t), note])
    with atomic_write(path) as f:
        f.write(out.getvalue())


def write_best_config(best: FrozenTrial, search: Search, path: Path, base_root: str | None) -> None:
    """The best trial's saved config.yaml, as a plain fit: without the study's reporter, and with the
    runs folder the base command had (not the study's)."""
    run_dir = Path(best.user_attrs[RUN_DIR])
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    trainer = config.get("trainer") or {}
    trainer["default_root_dir"] = base_root
    callbacks = trainer.get("callbacks") or []
    trainer["callbacks"] = [c for c in callbacks if not str(c.get("class_path", "")).endswith(".TrialReport")]
    params = "".join(f"#   {name}: {value}\n" for name, value in best.params.items())
    header = (
        f"# The best trial ({best.number}) of study {path.parent.name}: {search.objective} = {best.value}\n"
        f"# with\n{params}"
        f"# Repeat it as a plain fit:  python -m project fit --config {path}\n"
    )
    with atomic_write(path) as f:
        f.write(header + yaml.safe_dump(config, sort_keys=False))


def write_plots(study: optuna.Study, folder: Path) -> list[str]:
    """Draw each of Optuna's views that the study's trials allow; return why the others were skipped."""
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever the display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": views.plot_optimization_history,
        "param_importances": views.plot_param_importances,
        "parallel_coordinate": views.plot_parallel_coordinate,
        "intermediate_values": views.plot_intermediate_values,
    }
    skipped = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib view
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                skipped.append(f"{name}: {' '.join(str(e).split())}")
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        with atomic_write(folder / f"{name}.png", "wb") as f:
            figure.savefig(f, format="png", dpi=100)
        plt.close(figure)
    return skipped


def _shown_path(trial: FrozenTrial) -> str:
    path = trial.user_attrs.get(RUN_DIR)
    if path is None:
        return ""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)
