"""`python -m project cv`: k-fold cross-validation, every fold an ordinary `fit` in a process of its own.

    python -m project cv --config configs/digits.yaml --folds 5                  # runs/digits-cv5/
    python -m project cv --config configs/digits.yaml --folds 5 --trainer.max_epochs 10 --run_name short

Every argument that is not cv's own (configs, dotted overrides) goes to each fold's `fit`, which adds
`--data.init_args.folds K --data.init_args.fold i`: fold i of K stratified folds of the train+val pool
is its validation split (data/split.py `Split.kfold`), the other folds its training split; the test
split, where the dataset has one, is the same for every fold.

    runs/<name>/fold-0/ ...        each fold's run directory: everything a fit run has
    runs/<name>/logs/fold-0.log    what the fold's process printed
    runs/<name>/command.json       the folds and fit arguments: a re-run continues only the same cv
    runs/<name>/cv.json            per val/* and test/* metric: mean, std, the folds' values; the run dirs
    runs/<name>/cv.md              the same as a markdown table (metric | mean ± std | folds), also printed

std is the sample standard deviation over the folds (ddof=1). The same command again continues: folds
that finished are kept, not trained again; an unfinished one (killed, failed) runs again, from its
last checkpoint if it has one (`--resume auto`). A fold that fails is reported with its log, the other
folds still run, and the command exits with status 1 without writing cv.json. Problems every fold
would have (a bad option, more folds than the smallest class has samples) are one line, before any
fold starts or anything is written. Fold processes start as tune's trials do (sweep/runner.py): the
next fold's process imports torch while the current one trains.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from project.errors import CommandParser, UserError, exit_on_user_error
from project.files import atomic_write
from project.runs import read_json
from project.sweep.child import TRIAL_ENV
from project.sweep.runner import PACKAGE, check_command, last_error_line, launch_run, start_spare

PROG = f"python -m {PACKAGE} cv"
FIT_ONLY = ("fit", "validate", "test", "predict", "--ckpt_path", "--resume")
OURS = ("--data.init_args.folds", "--data.init_args.fold")  # set for each fold
METRIC_PREFIXES = ("val/", "test/")
FAILING = "the folds' fit command"  # how check_command names it in an error


def main(args: list[str]) -> None:
    if exit_on_user_error(lambda: run(args)):  # a fold failed
        raise SystemExit(1)


def parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog=PROG,
        allow_abbrev=False,
        description="k-fold cross-validation: one `fit` per fold, then the mean and std of each metric. "
        "Any other argument (--config FILE, --key value) is passed to every fold's `fit`.",
    )
    p.add_argument("--folds", type=int, required=True, help="how many stratified folds (at least 2)")
    p.add_argument(
        "--run_name",
        help="the folder under the runs root holding the folds (default: <last config's name>-cv<folds>); "
        "the same name continues an unfinished cv",
    )
    # Run by the first fold's spare process before any fold starts (torch is imported there already).
    p.add_argument("--check_pool", help=argparse.SUPPRESS)
    return p


def run(args: list[str]) -> list[str]:
    """Run or continue a cv; returns one line per fold that failed."""
    options, base_args = parser().parse_known_args(args)
    if options.folds < 2:
        raise UserError(f"--folds {options.folds}: k-fold cross-validation needs at least 2 folds")
    if options.check_pool is not None:
        check_pool(json.loads(options.check_pool), options.folds)
        return []
    for arg in base_args:
        name = arg.split("=", 1)[0]
        if name in FIT_ONLY or name in OURS:
            raise UserError(
                f"{name}: cv runs `fit` for each fold and sets the folds and the fold itself; "
                "give it only configs and --key value overrides (--run_name names the cv)"
            )
    name = options.run_name or default_name(base_args, options.folds)
    if not re.fullmatch(r"[\w.-]+", name):
        raise UserError(f"--run_name {name!r}: use letters, digits, '_', '-' and '.' (it names a folder)")
    spare = start_spare()  # imports torch while the checks below run; then trains the first fold
    try:
        root = check_base(base_args, options.folds, spare)
        return run_folds(root / name, name, options.folds, base_args, spare)
    finally:
        spare.kill()  # a no-op once its fold has ended
        spare.wait()


def default_name(base_args: list[str], folds: int) -> str:
    configs = [Path(base_args[i + 1]).stem for i, a in enumerate(base_args[:-1]) if a == "--config"]
    configs += [Path(a.split("=", 1)[1]).stem for a in base_args if a.startswith("--config=")]
    return f"{configs[-1] if configs else 'cv'}-cv{folds}"


def fold_args(base_args: list[str], folds: int, fold: int) -> list[str]:
    return [*base_args, "--data.init_args.folds", str(folds), "--data.init_args.fold", str(fold)]


def check_base(base_args: list[str], folds: int, spare: subprocess.Popen[bytes]) -> Path:
    """Check once, before any fold, what every fold would trip over: the fit command (as `fit
    --print_config` resolves it) and whether its pool splits into `folds` stratified folds. Both run
    in `spare` while it waits for its fold. Returns the runs root."""
    config = yaml.safe_load(
        check_command(spare, ["fit", *fold_args(base_args, folds, 0), "--print_config"], FAILING)
    )
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise UserError("the folds' fit command has no data: give a config with a data: section")
    if (data.get("init_args") or {}).get("split_file") is not None:
        raise UserError("cv makes each fold's split itself: drop data.init_args.split_file")
    check_command(spare, ["cv", "--folds", str(folds), "--check_pool", json.dumps(data)], FAILING)
    return Path((config.get("trainer") or {}).get("default_root_dir") or "runs")


def check_pool(data: dict[str, Any], folds: int) -> None:
    """Whether the pool of the resolved `data` config splits into `folds` stratified folds."""
    from project.data.split import Split
    from project.parser import located_class

    data_class = located_class(data["class_path"])
    if data_class is None:
        raise UserError(f"data class {data['class_path']} not found")
    module = data_class(**(data.get("init_args") or {}))
    module.prepare_data()
    Split.kfold(module.load_pool()[1], folds, 0, module.seed)


def run_folds(
    cv_dir: Path, name: str, folds: int, base_args: list[str], spare: subprocess.Popen[bytes]
) -> list[str]:
    claim(cv_dir, folds, base_args)
    run_dirs = [cv_dir / f"fold-{i}" for i in range(folds)]
    todo = [i for i in range(folds) if not finished(run_dirs[i])]
    print(f"cv {name}: {folds - len(todo)} of {folds} folds done; in {cv_dir}", flush=True)
    failed = []
    next_spare: subprocess.Popen[bytes] | None = spare
    try:
        for n, i in enumerate(todo):
            log = cv_dir / "logs" / f"fold-{i}.log"
            args = ["fit", *fold_args(base_args, folds, i), "--trainer.default_root_dir", str(cv_dir)]
            args += ["--run_name", run_dirs[i].name, "--resume", "auto"]  # an unfinished fold continues
            # TRIAL_ENV ties the fold's process to this one (sweep/child.py): no orphan outlives a kill.
            env = {TRIAL_ENV: json.dumps({"cv": name, "fold": i}), "WANDB_RUN_GROUP": name}
            log.parent.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            process = launch_run(next_spare, args, env, log)
            next_spare = start_spare() if n + 1 < len(todo) else None  # importing while this one trains
            try:
                process.wait()
            except KeyboardInterrupt:  # Ctrl-C reaches the fold too (one process group): let it end
                process.wait()
                raise UserError(
                    f"stopped in fold {i}; the same command continues it (finished folds are kept)"
                ) from None
            if process.returncode == 0 and finished(run_dirs[i]):
                accuracy = {k: v for k, v in fold_metrics(run_dirs[i]).items() if k.endswith("/acc")}
                shown = ", ".join(f"{k}={v:.4f}" for k, v in accuracy.items()) or "finished"
                print(f"fold {i}: {shown} in {time.monotonic() - started:.0f} s", flush=True)
            else:
                failed.append(f"fold {i} failed: {last_error_line(log) or process.returncode} (log: {log})")
                print(failed[-1], flush=True)
    finally:
        if next_spare is not None and next_spare is not spare:
            next_spare.kill()
            next_spare.wait()
    if failed:
        for line in failed:
            print(f"error: {line}", file=sys.stderr)
        print("error: the other folds are kept; the same command runs the failed ones again", file=sys.stderr)
        return failed
    summary = summarize(run_dirs)
    table = markdown_table(summary)
    write_once(cv_dir / "cv.json", json.dumps(summary, indent=2) + "\n")
    write_once(cv_dir / "cv.md", table)
    print(f"\n{table}\ncv.json: {cv_dir / 'cv.json'}; table: {cv_dir / 'cv.md'}")
    return []


def claim(cv_dir: Path, folds: int, base_args: list[str]) -> None:
    """Record what this cv runs, or check that the cv already in `cv_dir` ran the same."""
    command = {"folds": folds, "base_args": base_args}
    path = cv_dir / "command.json"
    earlier = read_json(path)
    if earlier and earlier != command:
        raise UserError(
            f"{cv_dir} holds a cv of another command (its folds or fit arguments differ); the same command "
            "continues it, or give --run_name NEW to start another"
        )
    if not earlier:
        if cv_dir.exists() and any(cv_dir.iterdir()):
            raise UserError(f"{cv_dir} exists and holds no cv; give --run_name NEW, or move it away")
        cv_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(json.dumps(command, indent=2) + "\n")


def finished(run_dir: Path) -> bool:
    """Whether a fold's fit ended well: run.json says so and metrics.json holds its metrics."""
    return read_json(run_dir / "run.json").get("status") == "finished" and bool(fold_metrics(run_dir))


def fold_metrics(run_dir: Path) -> dict[str, float]:
    metrics = read_json(run_dir / "metrics.json")
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def summarize(run_dirs: list[Path]) -> dict[str, Any]:
    """cv.json: for each metric every fold has, its mean, sample std (ddof=1) and the folds' values."""
    per_fold = [fold_metrics(run_dir) for run_dir in run_dirs]
    names = sorted(set.intersection(*(set(m) for m in per_fold)), key=lambda k: (not k.startswith("val/"), k))
    metrics = {}
    for metric in names:
        values = [m[metric] for m in per_fold]
        metrics[metric] = {"mean": statistics.mean(values), "std": statistics.stdev(values), "folds": values}
    return {
        "folds": len(run_dirs),
        "std": "sample standard deviation over the folds (ddof=1)",
        "run_dirs": [str(run_dir) for run_dir in run_dirs],
        "metrics": metrics,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    folds = summary["folds"]
    lines = [f"| metric | mean ± std ({folds} folds) | fold 0..{folds - 1} |", "|---|---|---|"]
    lines += [
        f"| {metric} | {m['mean']:.4f} ± {m['std']:.4f} | {', '.join(f'{v:.4f}' for v in m['folds'])} |"
        for metric, m in summary["metrics"].items()
    ]
    return "\n".join(lines) + "\n"


def write_once(path: Path, text: str) -> None:
    """Write `path` unless it already holds `text`: a re-run of a finished cv rewrites nothing."""
    if path.is_file() and path.read_text() == text:
        return
    with atomic_write(path) as f:
        f.write(text)
