"""`python -m project tune`: a hyperparameter sweep on Optuna, every trial an ordinary `fit`.

    python -m project tune --config configs/digits.yaml --search configs/search/digits.yaml --n_trials 20
    python -m project tune ... --workers 2                       # two trials at a time on this machine
    python -m project tune ... --storage postgresql://u:p@db/optuna  # the same on every machine: one study

Every argument that is not tune's own (configs, dotted overrides) is the base of every trial. The study
lives in runs/<study>/ (the runs folder of the base command); the same command again continues it.
Where things are: the search file (space.py), the study's storage (storage.py), the trial loop
(runner.py), what a trial reports from inside its fit (report.py), the files of a study (results.py).
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml

from project.errors import UserError, exit_on_user_error
from project.runs import flatten
from project.sweep.results import best_trial, write_results
from project.sweep.runner import (
    PACKAGE,
    Sweep,
    check_command,
    counted,
    reap_interrupted,
    start_spare,
    trials_left,
    work,
)
from project.sweep.space import Search, load_search
from project.sweep.storage import open_storage, shown, sqlite_url

DEFAULT_TRIALS = 20
IDENTITY, PRUNER, BASE = "search", "pruner", "base_args"  # study user attributes


def main(args: list[str]) -> None:
    exit_on_user_error(lambda: run(args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {PACKAGE} tune",
        allow_abbrev=False,
        description="A hyperparameter sweep on Optuna. Any other argument (--config FILE, --key value) is "
        "passed to every trial's `fit`.",
    )
    p.add_argument("--search", type=Path, required=True, help="the search file (configs/search/*.yaml)")
    p.add_argument("--n_trials", type=int, help=f"finished trials the study ends with (default: the search "
                   f"file's n_trials, else {DEFAULT_TRIALS})")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="trials run at once by this process (default 1)")
    p.add_argument(
        "--storage", help="SQLAlchemy URL of the study's database (default: runs/<study>/study.db)"
    )
    p.add_argument("--study_name", help="default: the search file's study_name, else its file name")
    return p


def run(args: list[str]) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets one line of ours instead
    # Heartbeats with ask/tell (rather than Study.optimize, which runs trials in this process) are what
    # a trial in a process of its own needs; Optuna flags them as experimental on every call.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
    )
    options, base_args = parser().parse_known_args(args)
    if any(a in ("fit", "validate", "test", "predict", "--ckpt_path") for a in base_args):
        raise UserError("tune runs `fit` for each trial: give it only configs and --key value overrides")
    search = load_search(options.search)
    n_trials = options.n_trials or search.n_trials or DEFAULT_TRIALS
    if n_trials < 1 or options.workers < 1:
        raise UserError("--n_trials and --workers must be at least 1")
    if search.grid and (points := math.prod(len(values) for values in search.grid.values())) < n_trials:
        print(f"note: the grid has {points} points, so the study ends after {points} trials, not {n_trials}")
        n_trials = points
    # Each worker's first trial process imports torch and Lightning meanwhile: the base check costs no wait.
    spares = [start_spare() for _ in range(min(options.workers, n_trials))]
    try:
        run_study(options, search, n_trials, base_args, spares)
    finally:
        for spare in spares:  # a no-op once its trial has ended; still importing if it never got one
            spare.kill()
            spare.wait()


def run_study(
    options: argparse.Namespace,
    search: Search,
    n_trials: int,
    base_args: list[str],
    spares: list[subprocess.Popen[bytes]],
) -> None:
    base = base_config(base_args, spares[0] if spares else None)
    check_keys(search, base)
    study_name = options.study_name or search.study_name or search.path.stem
    if not re.fullmatch(r"[\w.-]+", study_name):
        raise UserError(
            f"study name {study_name!r}: use letters, digits, '_', '-' and '.' (it names a folder)"
        )
    root = (base.get("trainer") or {}).get("default_root_dir")
    study_dir = Path(root or "runs") / study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = options.storage or sqlite_url(study_dir)
    storage = open_storage(url, heartbeat=True)
    study = open_study(storage, url, study_name, search, base_args)
    sweep = Sweep(study, storage, url, search, base_args, study_dir, n_trials, options.workers)
    with sweep.lock:
        for number in reap_interrupted(sweep):
            print(f"trial {number}: its tune process was killed; marked failed (interrupted), queued again")
        left = trials_left(sweep)
    if options.workers > max(left, 1):
        raise UserError(
            f"--workers {options.workers} but only {max(left, 0)} of the study's {n_trials} trials are left "
            f"to run; use --workers {max(left, 1)}, or raise --n_trials"
        )
    print(
        f"study {study_name}: {n_trials - left} of {n_trials} trials done; storage {shown(url)}", flush=True
    )
    run_workers(sweep, spares)
    skipped = write_results(study, search, study_dir, root)
    if sweep.abort:
        raise UserError(sweep.abort)
    summarize(sweep, best_trial(study), skipped, url)


def run_workers(sweep: Sweep, spares: list[subprocess.Popen[bytes]]) -> None:
    threads = [
        threading.Thread(target=work, args=(sweep, spares[i] if i < len(spares) else None), daemon=True)
        for i in range(sweep.workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except KeyboardInterrupt:  # Ctrl-C reaches the trials too (one process group): let them end
        print("stopping: the running trials are marked interrupted; the same command continues the study")
        sweep.stop.set()
        for thread in threads:
            thread.join()


def base_config(base_args: list[str], spare: subprocess.Popen[bytes] | None = None) -> dict[str, Any]:
    """The full config every trial starts from, as `fit --print_config` resolves it: a problem in the
    base command is reported once, here, rather than by every trial. Run by `spare` (a trial process
    that has imported the CLI meanwhile) unless it is gone."""
    args = ["fit", *base_args, "--print_config"]
    printed = check_command(spare, args, "the base command of the trials")
    config = yaml.safe_load(printed)
    return config if isinstance(config, dict) else {}


def check_keys(search: Search, base: dict[str, Any]) -> None:
    """Each searched name must be an option of the base config (a leaf, or a group such as an optimizer)."""
    known = set(flatten(base))
    groups = {".".join(key.split(".")[:i]) for key in known for i in range(1, key.count(".") + 1)}
    for name in search.params:
        if name not in known and name not in groups:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UserError(f"{search.path}: params.{name} is not an option of the base config{hint}")


def open_study(
    storage: optuna.storages.RDBStorage, url: str, name: str, search: Search, base_args: list[str]
) -> optuna.Study:
    """Create the study, or join it when it exists with the same search space, objective and base."""
    identity = search.identity()
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=search.direction,  # type: ignore[arg-type]  # checked by load_search
        sampler=search.make_sampler(),
        pruner=search.make_pruner(),
        load_if_exists=True,
    )
    if IDENTITY not in study.user_attrs:
        study.set_user_attr(IDENTITY, identity)
        study.set_user_attr(BASE, base_args)
        study.set_user_attr(PRUNER, list(search.pruner))
        return study
    differences = [
        what
        for what, theirs, ours in (
            ("search space, objective or direction", study.user_attrs[IDENTITY], identity),
            ("base command (configs and overrides)", study.user_attrs.get(BASE), base_args),
        )
        if theirs != ours
    ]
    if differences:
        done = sum(counted(t) for t in study.get_trials(deepcopy=False))
        raise UserError(
            f"study {name!r} in {shown(url)} ({done} trials) was made with another "
            f"{' and '.join(differences)}; "
            f"to start a new study give --study_name NEW (or study_name: in {search.path}); the same search "
            "file and command continue this one"
        )
    return study


def summarize(sweep: Sweep, best: optuna.trial.FrozenTrial | None, skipped: list[str], url: str) -> None:
    trials = sweep.study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials if counted(t)]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail") if states.count(s))
    print(f"\nstudy {sweep.study.study_name}: {len(states)} of {sweep.n_trials} trials finished ({counts})")
    if best is not None:
        print(f"best: trial {best.number}, {sweep.search.objective} = {best.value:.6g}")
        for name, value in best.params.items():
            print(f"  --{name} {value}")
        print(f"repeat it:  python -m {PACKAGE} fit --config {sweep.study_dir / 'best.yaml'}")
    print(f"trials: {sweep.study_dir / 'trials.csv'}; plots: {sweep.study_dir / 'plots'}/")
    for line in skipped:
        print(f"  (plot not drawn: {line})")
    print(f"live view:  optuna-dashboard {url}")
