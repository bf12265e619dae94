"""What `python -m project tune` costs: an N-trial study against the same N fits run plainly.

    venv/bin/python benchmarks/sweep.py [--n_trials 3] [--epochs 2]

Both arms train the digits demo (configs/digits.yaml as shipped: visual callbacks, W&B offline, CSV,
checkpoints) for --epochs epochs at N learning rates, every fit a process of its own. The study arm is
one `tune` command (a grid over the N rates, pruner none, so it runs exactly those N points), timed from
its start to its exit: its start-up, the base-config check (`fit --print_config`), the trials, and the
study's files and plots. The plain arm runs the same `fit` commands with the same overrides one after
another, each with a runs folder of its own: half of them before the study and half after, so a steady
drift of a shared machine weighs on both arms alike. From the study's own timestamps the extra time is
split into before the first trial, between trials, inside the trials and after the last.

A probe callback (FirstStepProbe below, on PYTHONPATH in both arms) writes the wall clock of each fit's
first training batch: against a plain fit's start, and against the moment the study gave a trial out
(its process may be older: `tune` starts the next trial's process, which imports torch and Lightning,
while the current trial trains; sweep/child.py).

Target: the study's wall time <= 1.10 x the plain fits'. Everything runs in a temp dir; ~3 min on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from _common import REPO, median, report

PROBE_DIR_ENV = "BENCH_SWEEP_PROBE_DIR"
LEARNING_RATE = "model.init_args.scheduler.init_args.max_lr"  # the same compute whatever its value


class FirstStepProbe(pl.Callback):
    """At the first training batch, writes $BENCH_SWEEP_PROBE_DIR/<pid>.json: the seconds since this
    process started, and the wall clock. Outside this benchmark (no variable) it does nothing."""

    def __init__(self) -> None:
        self.folder = os.environ.get(PROBE_DIR_ENV)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.folder is None:
            return
        record = {"since_start": process_age(), "time": time.time()}
        Path(self.folder, f"{os.getpid()}.json").write_text(json.dumps(record))
        self.folder = None  # the first batch only


def process_age() -> float:
    """Seconds since this process started: the kernel's start time against the uptime (both 10 ms ticks)."""
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def fit_args(epochs: int) -> list[str]:
    """The base of every fit in both arms: the digits demo, shortened."""
    return [
        "--config", str(REPO / "configs" / "digits.yaml"),
        "--trainer.max_epochs", str(epochs),
        "--test_after_fit", "false",
        "--trainer.callbacks+", "sweep.FirstStepProbe",
    ]  # fmt: skip


def environment(probe_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # a W&B service of its own
    env |= {PROBE_DIR_ENV: str(probe_dir), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "benchmarks"), env.get("PYTHONPATH", "")])
    return env


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run `command` to its end; return its start (wall clock) and its wall time. A failure stops the
    benchmark with the end of its output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        start, clock = time.time(), time.perf_counter()
        done = subprocess.run(command, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - clock
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"error: {' '.join(command[2:5])} ... failed (exit {done.returncode}):\n{tail}")
    return start, seconds


def probes(folder: Path) -> list[dict[str, float]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def study_trials(study_dir: Path) -> list[tuple[float, float]]:
    """Each trial's start and end (wall clock), from the study's storage, in trial order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=study_dir.name, storage=f"sqlite:///{study_dir / 'study.db'}")
    spans = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        assert trial.datetime_start is not None and trial.datetime_complete is not None
        spans.append((trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()))
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    n = args.n_trials
    began = time.perf_counter()
    rates = [round(0.004 + 0.001 * i, 6) for i in range(n)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        search = tmp / "search.yaml"
        spec = {"objective": "val/acc", "sampler": "grid", "pruner": "none", "params": {}}
        spec["params"] = {LEARNING_RATE: {"categorical": rates}}
        search.write_text(yaml.safe_dump(spec))
        base = fit_args(args.epochs)
        # Imports and the file cache warm, off the clock.
        subprocess.run([sys.executable, "-m", "project", "fit", *base, "--print_config"], cwd=tmp, check=True,
                       capture_output=True, env=environment(tmp))  # fmt: skip

        plain_walls: list[float] = []
        plain_starts: list[float] = []

        def plain(i: int) -> None:
            root = tmp / f"plain-{i}"
            command = [sys.executable, "-m", "project", "fit", *base, f"--{LEARNING_RATE}", str(rates[i])]
            command += ["--trainer.default_root_dir", str(root)]
            (tmp / "probe-plain").mkdir(exist_ok=True)
            start, seconds = timed(command, environment(tmp / "probe-plain"), root / "fit.log")
            plain_starts.append(start)
            plain_walls.append(seconds)

        for i in range(n // 2):
            plain(i)
        root = tmp / "study"
        command = [sys.executable, "-m", "project", "tune", *base, "--search", str(search)]
        command += ["--n_trials", str(n)]
        command += ["--trainer.default_root_dir", str(root)]
        (tmp / "probe-trials").mkdir()
        study_start, study_wall = timed(command, environment(tmp / "probe-trials"), root / "tune.log")
        for i in range(n // 2, n):
            plain(i)

        study_dir = root / search.stem
        with (study_dir / "trials.csv").open() as f:
            states = [row["state"] for row in csv.DictReader(f)]
        if states != ["complete"] * n:
            tail = (root / "tune.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"error: the study's trials ended {states}, not {n} x complete:\n{tail}")
        spans = study_trials(study_dir)
        plain_probes, trial_probes = probes(tmp / "probe-plain"), probes(tmp / "probe-trials")
    load_after = os.getloadavg()[0]

    plain_total = sum(plain_walls)
    rows = [
        {"arm": f"{n} plain fits", "wall (s)": plain_total, "per fit (s)": plain_total / n, "ratio": 1.0,
         "each (s)": " ".join(f"{s:.1f}" for s in plain_walls)},
        {"arm": f"tune, {n} trials", "wall (s)": study_wall, "per fit (s)": study_wall / n,
         "ratio": study_wall / plain_total, "each (s)": " ".join(f"{b - a:.1f}" for a, b in spans)},
    ]  # fmt: skip
    note = (
        f"target: ratio <= 1.10. Fits of {args.epochs} epochs of the digits demo; load average (1 min) "
        f"{load_before:.1f} before, {load_after:.1f} after (other processes on this machine share its cores)."
    )
    report("sweep", rows, ["arm", "wall (s)", "per fit (s)", "ratio", "each (s)"], note=note)
    print()

    trials = sum(end - start for start, end in spans)
    between = sum(spans[k + 1][0] - spans[k][1] for k in range(len(spans) - 1))
    parts = [
        ("before the first trial: tune start-up, base-config check, study", spans[0][0] - study_start, None),
        ("between trials: ask, tell, reap", between, between / max(n - 1, 1)),
        ("the trials (a fit each, with TrialReport)", trials, trials / n),
        ("after the last trial: trials.csv, best.yaml, plots", study_start + study_wall - spans[-1][1], None),
        ("for comparison: the plain fits", plain_total, plain_total / n),
    ]
    breakdown = [
        {"part of the study": name, "s": total, "per trial (s)": "" if each is None else each}
        for name, total, each in parts
    ]
    # The study's cost is a fixed part and a part per trial: for N trials of T s, the ratio is
    # 1 + (fixed + N x each) / (N x T).
    fixed = study_wall - trials - between
    each = (trials + between) / n - plain_total / n
    fit_s = plain_total / n
    note = f"fixed: {fixed:.1f} s a study; per trial: {each:+.2f} s (trial and gap, against a plain fit)"
    if each < 0.1 * fit_s:
        note += f"; ratio <= 1.10 for fits of {fit_s:.0f} s from {fixed / (0.1 * fit_s - each):.0f} trials on"
    report("sweep_breakdown", breakdown, ["part of the study", "s", "per trial (s)"], note=note)
    print()

    # A trial's process may have been started (and imported torch) before its trial, while the one
    # before it trained (sweep/child.py): a trial's start is when the study gave it out (Optuna's
    # datetime_start, at ask), a plain fit's when this process started it.
    plain_order = sorted(plain_probes, key=lambda record: record["time"])
    trial_order = sorted(trial_probes, key=lambda record: record["time"])
    plain_first = median([p["time"] - start for p, start in zip(plain_order, plain_starts, strict=True)])
    trial_first = median([p["time"] - span[0] for p, span in zip(trial_order, spans, strict=True)])
    first = [
        {"fit": f"plain fit (median of {len(plain_probes)})", "start to first batch (s)": plain_first},
        {"fit": f"trial (median of {len(trial_probes)})", "start to first batch (s)": trial_first},
        {"fit": "difference, trial - plain", "start to first batch (s)": trial_first - plain_first},
    ]
    note = (
        "plain: from its Popen; trial: from its ask (the study's clock); a trial process's own age at its "
        f"first batch (from /proc): {median([p['since_start'] for p in trial_probes]):.2f} s"
    )
    report("sweep_first_step", first, ["fit", "start to first batch (s)"], note=note)
    print(f"(this benchmark: {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
