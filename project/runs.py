"""`python -m project runs [ROOT]`: one table of every run directory under ROOT (default runs/), at
any depth (a sweep's trials are in runs/<study>/trial-NNNN/), to compare what was trained.

    python -m project runs                          # every run under runs/
    python -m project runs runs/lr-study --sort val/loss
    python -m project runs --diff RUN_A RUN_B       # the config keys whose values differ
    python -m project runs --csv > runs.csv         # every column, full keys, raw numbers

A run directory is a folder holding config.yaml, run.json or trial.json; nothing inside one is
searched further (its wandb/ has config.yaml files of its own). Each row: the run's path relative to
ROOT, its model class, the config values that differ between the listed runs (config.yaml flattened
to dotted keys, as on the command line; the newest config.fit.N.yaml of a resumed run), its final
metrics (metrics.json; `--metrics` picks which), epochs, wall time (run.json) and status:

    finished, failed, interrupted   as run.json says (callbacks/run_status.py)
    running                         run.json says running and a process holds the run's .lock
    killed                          run.json says running but nobody holds the .lock: the job died
                                    without a word (SIGKILL, out of memory, a lost node)
    pruned, failed                  a sweep trial's state (trial.json) where run.json says it ended
    running?                        run.json says running; whether its job lives cannot be told (a
                                    file system without locks, and the job on another host)
    unknown                         no run.json (a run older than RunStatus) and no final metrics

Keys that name or place a run rather than configure it (IDENTITY_KEYS) are left out, and the table
leaves the lists of loggers, callbacks and plugins to --diff. It reads files only: no torch, no
Lightning, no W&B, so it answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import os
import re
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from project.errors import CommandParser, UserError, exit_on_user_error

DEFAULT_ROOT = "runs"  # as project/run_dir.py's DEFAULT_RUNS_ROOT (not imported: it loads Lightning)
RUN_FILES = ("config.yaml", "run.json", "trial.json")
LOCK_FILE = ".lock"
# Config keys that say which run this is or where it lives, not how it was trained.
IDENTITY_KEYS = {"run_name", "experiment", "ckpt_path", "config", "resume", "trainer.default_root_dir"}
# Lists of classes shown by --diff only: which loggers, visualizations and plugins are no hyperparameter.
DIFF_ONLY = ("trainer.logger.", "trainer.callbacks.", "trainer.plugins.")
DEFAULT_METRICS = "val/*,test/*"
# Metrics where lower is better, by a part of their name: --sort lists these ascending.
LOWER_IS_BETTER = ("loss", "err", "ece", "mse", "mae", "perplexity")
# A trial's state (trial.json, written by the sweep) where run.json alone would say it ended.
FINDERS = ("lr_find", "scale_batch_size")  # the result file of finders.py: <name>.json
TRIAL_STATES = {"PRUNED": "pruned", "FAIL": "failed"}
# Values of metrics.json that count rather than measure (the epochs column has the first).
BOOKKEEPING = ("epoch", "global_step")
MISSING = "-"
RESUMED_CONFIG = re.compile(r"config\.fit\.(\d+)\.yaml")  # project/run_dir.py RunConfigSaver


@dataclass
class Run:
    path: Path
    name: str  # relative to ROOT
    config: dict[str, Any]  # flattened to dotted keys; {} when there is no config.yaml yet
    metrics: dict[str, float]
    status: str
    epochs: int | None
    wall_s: float | None
    model: str = MISSING
    record: dict[str, Any] = field(default_factory=dict)  # run.json


def main(args: list[str]) -> None:
    output = exit_on_user_error(lambda: runs_command(args))
    try:
        sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:  # `runs | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def runs_command(args: list[str]) -> str:
    """What `python -m project runs ARGS` prints."""
    options = _parser().parse_args(args)
    root = Path(options.root)
    if not root.exists():
        raise UserError(
            f"{root} does not exist: pass the folder that holds the run directories (runs/ by default, "
            "or the --trainer.default_root_dir the runs were given)"
        )
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder of run directories")
    if options.diff:
        first, second = (read_run(_run_dir_named(name, root), root) for name in options.diff)
        return format_diff(first, second, as_csv=options.csv)
    runs = [read_run(path, root) for path in find_run_dirs(root)]
    if not runs:
        raise UserError(
            f"no run directories under {root} (a run directory holds config.yaml or run.json): pass the "
            "folder your runs went to (--trainer.default_root_dir)"
        )
    if options.sort:
        runs = sorted_runs(runs, options.sort, options.reverse)
    return format_table(runs, options.metrics, options.sort, as_csv=options.csv)


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m project runs",
        description="A table of the run directories under ROOT: the settings that differ between them, "
        "final metrics, epochs, wall time, status (finished, running, killed, failed, pruned, ...).",
    )
    parser.add_argument(
        "root", nargs="?", default=DEFAULT_ROOT, metavar="ROOT", help="searched at any depth (default: runs)"
    )
    parser.add_argument(
        "--sort",
        metavar="METRIC",
        help="best first (ascending for losses and errors, else descending); runs without it last",
    )
    parser.add_argument("--reverse", action="store_true", help="worst first (with --sort)")
    parser.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        metavar="PATTERNS",
        help=f"which metrics.json values to show, comma-separated globs (default {DEFAULT_METRICS})",
    )
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="the config keys whose values differ, side by side",
    )
    parser.add_argument("--csv", action="store_true", help="comma-separated: full keys, raw numbers, seconds")
    return parser


# ----- finding and reading run directories -----


def find_run_dirs(root: Path) -> list[Path]:
    """The run directories at or under `root`, in name order; a run directory is not searched further."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if any(name in files for name in RUN_FILES):
            found.append(Path(folder))
            subfolders.clear()
        else:
            subfolders[:] = [s for s in subfolders if not s.startswith(".") and s != "wandb"]
    return sorted(found)


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def _run_dir_named(name: str, root: Path) -> Path:
    """A run given to --diff as a path, or as its name relative to ROOT."""
    path = Path(name)
    if not path.is_dir() and (root / name).is_dir():
        path = root / name
    if not path.is_dir():
        raise UserError(f"--diff: {name} is neither a folder nor a run under {root}")
    if not (path / "config.yaml").is_file():
        what = "a run that saved no config.yaml yet" if is_run_dir(path) else "no run directory"
        raise UserError(f"--diff: {path} is {what} (a run directory holds config.yaml)")
    return path


def read_run(path: Path, root: Path) -> Run:
    try:
        name = path.relative_to(root).as_posix() if path != root else path.resolve().name
    except ValueError:  # a run given to --diff by a path outside ROOT
        name = str(path)
    config = _read_yaml(_newest_config(path))
    record = read_json(path / "run.json")
    final = read_json(path / "metrics.json")
    metrics = {k: float(v) for k, v in final.items() if _is_number(v) and k not in BOOKKEEPING}
    trial = read_json(path / "trial.json")
    epochs = record.get("epochs", final.get("epoch"))
    model = _dig(config, "model", "class_path")
    # A finder's run (finders.py) trains nothing: its status says which finder it was.
    finder = next((name for name in FINDERS if (path / f"{name}.json").is_file()), None)
    status = finder or run_status(path, record, trial, has_metrics=bool(metrics))
    return Run(
        path=path,
        name=name,
        config=flatten(config),
        metrics=metrics,
        status=status,
        epochs=None if epochs is None else int(epochs),
        wall_s=_wall_s(record, status),
        model=str(model).rsplit(".", 1)[-1] if model else MISSING,
        record=record,
    )


def _newest_config(path: Path) -> Path:
    """config.yaml, or for a resumed run the config of its last segment (config.fit.N.yaml)."""
    numbers = [int(m.group(1)) for p in path.iterdir() if (m := RESUMED_CONFIG.fullmatch(p.name))]
    return path / (f"config.fit.{max(numbers)}.yaml" if numbers else "config.yaml")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):  # not written yet, or not ours: a row without config values
        return {}
    return content if isinstance(content, dict) else {}


def read_json(path: Path) -> dict[str, Any]:
    """A run's JSON file as a mapping; empty when absent, half-read or not a mapping."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dig(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None  # type: ignore[assignment]
    return config


def _wall_s(record: dict[str, Any], status: str) -> float | None:
    """run.json's wall time; for a live run, its time so far (a killed one's ends at its last update)."""
    if not _is_number(record.get("wall_s")):
        return None
    wall = float(record["wall_s"])
    if status == "running":
        try:
            return wall + max(0.0, time.time() - datetime.fromisoformat(record["updated"]).timestamp())
        except (KeyError, TypeError, ValueError):
            pass
    return wall


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys as on the command line (`model.init_args.optimizer.init_args.lr`). An entry of a list
    of classes (callbacks, loggers) is keyed by its class's short name (`trainer.callbacks.TopKExamples.
    init_args.k`, `#2` for a second of the same class): adding one does not renumber the others."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= flatten(item, f"{prefix}{key}.")
        return flat
    if isinstance(value, list) and value and all(isinstance(v, dict) and "class_path" in v for v in value):
        flat, seen = {}, dict[str, int]()
        for item in value:
            short = str(item["class_path"]).rsplit(".", 1)[-1]
            seen[short] = seen.get(short, 0) + 1
            label = short if seen[short] == 1 else f"{short}#{seen[short]}"
            flat |= flatten(item, f"{prefix}{label}.")
        return flat
    return {prefix.rstrip("."): value}


def configuring(key: str) -> bool:
    """Whether a dotted key configures the run (rather than naming or placing it)."""
    return key not in IDENTITY_KEYS


# ----- status -----


def run_status(path: Path, record: dict[str, Any], trial: dict[str, Any], has_metrics: bool) -> str:
    status = record.get("status")
    if status == "running":
        held = lock_held(path)
        status = "running" if held else "killed" if held is False else "running?"
    elif status is None:  # no run.json: a run from before RunStatus, or one that never got going
        status = "running" if lock_held(path) else "finished" if has_metrics else "unknown"
    state = str(trial.get("state", "")).upper()
    if trial and status not in ("running", "running?"):
        if state in TRIAL_STATES and status != "killed":
            status = TRIAL_STATES[state]
        elif state == "COMPLETE" and status == "unknown":
            status = "finished"
    return str(status)


def lock_held(run_dir: Path) -> bool | None:
    """Whether a live process holds the run directory's lock (project/run_dir.py lock_run_dir: a POSIX
    fcntl lock on .lock); None when it cannot be told.

    The lock is only asked about (F_GETLK), never taken, even for a moment: taking it would make a job
    starting in that instant refuse the directory as in use. POSIX locks belong to a process, and
    closing any descriptor of the file drops all of that process's locks on it, so a directory this
    very process holds is answered from its own table without opening the file."""
    holder = sys.modules.get("project.run_dir")  # loaded only if this process runs commands itself
    if holder is not None and run_dir.resolve() in getattr(holder, "_locks", {}):
        return True
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, _flock(fcntl.F_WRLCK))
        return _lock_type(answer) != fcntl.F_UNLCK
    except OSError:  # a file system without locks (some NFS setups): ask the pid the file names
        return _holder_alive(path)
    finally:
        os.close(fd)


# struct flock: Linux orders its fields type, whence, start, len, pid; the BSDs and macOS start, len,
# pid, type, whence. The whole file (start 0, length 0 = to the end), as lockf locks it.
_BSD = sys.platform.startswith(("darwin", "freebsd", "openbsd", "netbsd"))
_FLOCK = "qqihh" if _BSD else "hhqqi"


def _flock(lock_type: int) -> bytes:
    fields = (0, 0, 0, lock_type, os.SEEK_SET) if _BSD else (lock_type, os.SEEK_SET, 0, 0, 0)
    return struct.pack(_FLOCK, *fields) + bytes(8)  # room for the platform's padding


def _lock_type(answer: bytes) -> int:
    fields = struct.unpack(_FLOCK, answer[: struct.calcsize(_FLOCK)])
    return int(fields[3] if _BSD else fields[0])


def _holder_alive(lock_file: Path) -> bool | None:
    """From the `host H, pid P, since ...` line the holder wrote: whether P still runs on this host."""
    try:
        match = re.match(r"host (\S+), pid (\d+)", lock_file.read_text(errors="replace"))
    except OSError:
        return None
    if match is None or match.group(1) != socket.gethostname():
        return None
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# ----- sorting -----


def sorted_runs(runs: list[Run], metric: str, reverse: bool = False) -> list[Run]:
    """Best first by `metric` (lowest first for a loss or an error); runs without it last."""
    known = sorted({k for run in runs for k in run.metrics})
    if metric not in known:
        raise UserError(f"--sort {metric}: no run has this metric; the runs have: {', '.join(known)}")
    ascending = lower_is_better(metric) != reverse
    having = [run for run in runs if metric in run.metrics]
    having.sort(key=lambda run: run.metrics[metric] if ascending else -run.metrics[metric])  # stable: by name
    return having + [run for run in runs if metric not in run.metrics]


def lower_is_better(metric: str) -> bool:
    return any(part in metric.lower() for part in LOWER_IS_BETTER)


# ----- output -----


def differing_keys(runs: list[Run]) -> list[str]:
    """The configuring keys whose values are not the same in every run that has a config."""
    configured = [run.config for run in runs if run.config]
    keys = dict.fromkeys(k for config in configured for k in config)
    return [
        key
        for key in keys
        if configuring(key)
        and not f"{key}.".startswith(DIFF_ONLY)
        and key != "model.class_path"  # the model column
        and len({_canonical(config.get(key, _Absent)) for config in configured}) > 1
    ]


class _Absent:
    pass


def _canonical(value: Any) -> str:
    return "<absent>" if value is _Absent else json.dumps(value, sort_keys=True, default=str)


def format_table(runs: list[Run], metric_patterns: str, sort: str | None, as_csv: bool) -> str:
    keys = differing_keys(runs)
    patterns = [p.strip() for p in metric_patterns.split(",") if p.strip()]
    present = sorted({k for run in runs for k in run.metrics}, key=_metric_order)
    metrics = [m for m in present if any(fnmatchcase(m, p) for p in patterns) or m == sort]
    if as_csv:
        header = ["name", "model", *keys, *metrics, "epochs", "wall_s", "status", "error"]
        rows = [
            [run.name, run.model, *(_csv_value(run.config.get(k, "")) for k in keys),
             *(run.metrics.get(m, "") for m in metrics), _blank(run.epochs), _blank(run.wall_s), run.status,
             run.record.get("error") or ""]
            for run in runs
        ]  # fmt: skip
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *rows])
        return out.getvalue()
    header = ["name", "model", *short_names(keys), *metrics, "epochs", "wall", "status"]
    rows = [
        [run.name, run.model, *(_show(run.config.get(k, _Absent)) for k in keys),
         *(_number(run.metrics.get(m)) for m in metrics), _blank(run.epochs) or MISSING,
         duration(run.wall_s), run.status]
        for run in runs
    ]  # fmt: skip
    numeric = {i for i in range(2, len(header) - 1) if all(_looks_numeric(row[i]) for row in rows)}
    # Why each run failed, under the table: a column would be as wide as the longest message.
    errors = [f"{run.name}: {run.record['error']}\n" for run in runs if run.record.get("error")]
    return aligned([header, *rows], right=numeric) + "".join(["\n", *errors] if errors else [])


def _metric_order(metric: str) -> tuple[int, str]:
    stages = ("val/", "test/", "train/")
    return next((i for i, s in enumerate(stages) if metric.startswith(s)), len(stages)), metric


def short_names(keys: list[str]) -> list[str]:
    """Column titles: each key without `init_args.`, cut to its shortest ending no other key shares
    (`model.init_args.optimizer.init_args.lr` -> `lr`). --csv has the full keys."""
    parts = [[p for p in key.split(".") if p != "init_args"] for key in keys]
    names = []
    for mine in parts:
        for n in range(1, len(mine) + 1):
            ending = mine[-n:]
            if sum(other[-n:] == ending for other in parts) == 1:
                break
        names.append(".".join(ending))
    return names


def format_diff(first: Run, second: Run, as_csv: bool) -> str:
    keys = dict.fromkeys([*first.config, *second.config])
    differing = [
        key
        for key in keys
        if configuring(key)
        and _canonical(first.config.get(key, _Absent)) != _canonical(second.config.get(key, _Absent))
    ]
    if as_csv:
        out = io.StringIO()
        rows = [
            [k, _csv_value(first.config.get(k, "")), _csv_value(second.config.get(k, ""))] for k in differing
        ]
        csv.writer(out, lineterminator="\n").writerows([["key", first.name, second.name], *rows])
        return out.getvalue()
    if not differing:
        return f"{first.name} and {second.name} have the same config\n"
    rows = [
        [k, *(_show(run.config.get(k, _Absent), full=True) for run in (first, second))] for k in differing
    ]
    return aligned([["key", first.name, second.name], *rows], right=set())


def aligned(rows: list[list[str]], right: set[int]) -> str:
    """Plain text columns, two spaces apart, never cut or wrapped: the same on a terminal and in a pipe."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _show(value: Any, full: bool = False) -> str:
    if value is _Absent:
        return MISSING
    if isinstance(value, float):
        return repr(value) if full else f"{value:.4g}"
    if isinstance(value, str):
        is_class = not full and re.fullmatch(r"([a-z_]\w*\.)+[A-Z]\w*", value)
        return value.rsplit(".", 1)[-1] if is_class else value
    return json.dumps(value, separators=(",", ":"))  # ints, bools, null, lists


def _csv_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) else json.dumps(value, separators=(",", ":"))


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4g}"


def _blank(value: float | None) -> str:
    return "" if value is None else str(value)


def _looks_numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell == MISSING
    return True


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
