"""The trial loop of `tune`: each worker thread asks the study for a trial, runs it as an ordinary `fit`
in a process of its own, and tells the study how it ended; until the study holds `n_trials` finished
trials, counted in the study's storage, so workers on other machines share the budget.

    runs/<study>/trial-0007/        the trial's run directory: everything a fit run has, plus trial.json
    runs/<study>/logs/trial-0007.log  what the trial's process printed

How a trial ends, and what counts toward n_trials:
    complete   the fit ended; its value is the objective in metrics.json (the last validation epoch)
    pruned     TrialReport stopped it early (report.py); its run directory is kept
    failed     the fit failed (an error, a NaN, out of memory): counts, with the error's line kept
    failed, interrupted   the tune process running it was killed or stopped: does not count, and the
               same parameters are queued again, so a resumed study ends with n_trials finished trials

Each worker keeps one spare trial process (child.serve), started while the previous trial trains (the
first ones as tune starts; the first worker's runs command.py's base-config check before its trial): it
has imported torch and Lightning by the time its trial is handed to it, so a trial's start waits for no
imports of its own.

A trial's process dies with its tune process (child.py). The next tune process on the same machine
marks such a trial interrupted at once (its worker's pid is gone); on another machine the storage's
heartbeat goes stale and Optuna's `fail_stale_trials` marks it after storage.GRACE_S seconds.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from project.errors import UserError
from project.files import atomic_write
from project.runs import read_json
from project.sweep.child import MISSING, PRUNED_AT, TRIAL_ENV
from project.sweep.space import Search
from project.sweep.storage import HEARTBEAT_S, shown

PACKAGE = __name__.split(".")[0]  # `python -m <package> fit`, whatever the project was renamed to
REPORTER = f"{__name__.rsplit('.', 1)[0]}.report.TrialReport"
WORKER, ERROR, RUN_DIR, RETRY_OF = "worker", "error", "run_dir", "retry_of"  # trial user attributes
HOST = socket.gethostname()


@dataclass
class Sweep:
    """One tune process's view of the study it works on."""

    study: optuna.Study
    storage: optuna.storages.RDBStorage
    storage_url: str
    search: Search
    base_args: list[str]  # fit's arguments: configs and dotted overrides
    study_dir: Path
    n_trials: int
    workers: int = 1  # this process's
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    abort: str | None = None  # a problem every trial would have: the study stops with it
    children: set[subprocess.Popen[bytes]] = field(default_factory=set)


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial used up one of the study's n_trials."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and ERROR in trial.user_attrs


def trials_left(sweep: Sweep) -> int:
    """n_trials less the finished trials and those running (here or on other machines)."""
    trials = sweep.study.get_trials(deepcopy=False)
    return sweep.n_trials - sum(counted(t) or t.state == TrialState.RUNNING for t in trials)


def reap_interrupted(sweep: Sweep) -> list[int]:
    """Mark the running trials whose tune process is gone as failed (interrupted), queue their
    parameters again, and return their numbers."""
    running = sorted(t.number for t in sweep.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    optuna.storages.fail_stale_trials(sweep.study)  # other machines' dead workers (stale heartbeat)
    # Read again, and only about the trials running at the first read: meanwhile other tune processes
    # may have started trials of their own, or ended theirs (completed, pruned or failed with an error).
    now = {t.number: t for t in sweep.study.get_trials(deepcopy=False)}
    reaped = [
        number for number in running if now[number].state == TrialState.FAIL and not counted(now[number])
    ]
    for number in running:
        worker = now[number].user_attrs.get(WORKER)
        gone = worker is not None and worker.get("host") == HOST and not _alive(worker)
        if now[number].state == TrialState.RUNNING and gone:  # its tune process, on this machine, died
            sweep.study.tell(number, state=TrialState.FAIL)
            reaped.append(number)
    for number in reaped:
        sweep.study.enqueue_trial(now[number].params, user_attrs={RETRY_OF: number})
    return reaped


def work(sweep: Sweep, spare: subprocess.Popen[bytes] | None = None) -> None:
    """One worker: run trials until the budget is used up, the study is stopped, or a problem aborts it.
    `spare`: a trial process already importing (child.serve), for its first trial; each trial started
    starts the spare for the next one (started by this thread: the lifeline of child.py is tied to it)."""
    try:
        while not sweep.stop.is_set():
            with sweep.lock:  # one ask at a time in this process, so local workers never overshoot
                for number in reap_interrupted(sweep):
                    print(
                        f"trial {number}: its tune process was killed; marked failed (interrupted), "
                        "queued again"
                    )
                if trials_left(sweep) <= 0 or _grid_done(sweep):
                    return
                trial = sweep.study.ask(sweep.search.params)
                trial_id = _trial_id(sweep, trial.number)
                sweep.storage.record_heartbeat(trial_id)
                trial.set_user_attr(
                    WORKER, {"host": HOST, "pid": os.getpid(), "start": _start_time(os.getpid())}
                )
                more = trials_left(sweep) >= sweep.workers  # after every worker's trial: one more
            spare = run_trial(sweep, trial, trial_id, spare, more)
    finally:
        if spare is not None:
            spare.kill()
            spare.wait()


def start_spare() -> subprocess.Popen[bytes]:
    """A trial process that imports the CLI now and runs the trial it is given later (child.serve)."""
    return subprocess.Popen(
        [sys.executable, "-m", f"{PACKAGE}.sweep.child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,  # one line per command it runs before its trial (run_in_spare)
        stderr=subprocess.DEVNULL,
        env=_trial_env(),
    )


def run_in_spare(spare: subprocess.Popen[bytes], args: list[str]) -> subprocess.CompletedProcess[str] | None:
    """`python -m <package> ARGS` run by a spare that then still waits for its trial: what
    `subprocess.run` would return, without starting (and importing) a process; None if the spare died."""
    if spare.stdin is None or spare.stdout is None or spare.poll() is not None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "out", Path(folder) / "err"
        try:
            spare.stdin.write((json.dumps({"check": args, "out": str(out), "err": str(err)}) + "\n").encode())
            spare.stdin.flush()
        except OSError:
            return None
        code = spare.stdout.readline().strip()
        if not code:  # it died meanwhile
            return None
        return subprocess.CompletedProcess(args, int(code), out.read_text(), err.read_text())


def check_command(spare: subprocess.Popen[bytes] | None, args: list[str], failing: str) -> str:
    """What `python -m <package> ARGS` prints, run by `spare` while it waits for its trial (by a process
    of its own when there is none or it died); a failure is one UserError, `<failing> fails: <error>`."""
    done = (spare and run_in_spare(spare, args)) or subprocess.run(
        [sys.executable, "-m", PACKAGE, *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise UserError(f"{failing} fails: {error_line(done.stderr) or ''}")
    return done.stdout


def run_trial(
    sweep: Sweep,
    trial: optuna.trial.Trial,
    trial_id: int,
    spare: subprocess.Popen[bytes] | None = None,
    more: bool = False,
) -> subprocess.Popen[bytes] | None:
    """Run one trial (in `spare` if it is still waiting, else in a new process) and tell the study how it
    ended; with `more`, start and return the spare for the next one."""
    run_dir = sweep.study_dir / f"trial-{trial.number:04d}"
    log = sweep.study_dir / "logs" / f"{run_dir.name}.log"
    if run_dir.exists():  # never write into a folder of another study that had this name
        _end(sweep, trial, TrialState.FAIL, None, None)
        sweep.abort = (
            f"{run_dir} exists but is no trial of this study in {shown(sweep.storage_url)}: the study's "
            "storage is not the one those trials were written to; pass another --study_name, or move "
            f"{sweep.study_dir} away"
        )
        sweep.stop.set()
        return spare
    trial.set_user_attr(RUN_DIR, str(run_dir.resolve()))
    args = ["fit", *sweep.base_args, *overrides(trial.params)]
    args += ["--trainer.default_root_dir", str(sweep.study_dir), "--run_name", run_dir.name]
    args += ["--trainer.callbacks+", REPORTER]
    context = {
        "storage": sweep.storage_url,
        "study": sweep.study.study_name,
        "trial_id": trial_id,
        "objective": sweep.search.objective,
    }
    env = {TRIAL_ENV: json.dumps(context), "WANDB_RUN_GROUP": sweep.study.study_name}
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    process = launch_run(spare, args, env, log)
    spare = start_spare() if more and not sweep.stop.is_set() else None
    sweep.children.add(process)
    while True:  # the heartbeat tells other machines this trial is alive
        try:
            process.wait(timeout=HEARTBEAT_S)
            break
        except subprocess.TimeoutExpired:
            sweep.storage.record_heartbeat(trial_id)
    sweep.children.discard(process)
    seconds = time.monotonic() - started
    attrs = sweep.storage.get_trial_user_attrs(trial_id)
    metrics = read_json(run_dir / "metrics.json")
    value = metrics.get(sweep.search.objective)
    if MISSING in attrs:
        sweep.abort = last_error_line(log) or f"the objective {sweep.search.objective} is never logged"
        sweep.stop.set()
        state, error = TrialState.FAIL, None  # a problem of the search file, not of this trial: no count
    elif process.returncode == 0 and PRUNED_AT in attrs:
        state, error = TrialState.PRUNED, None
    elif process.returncode == 0 and isinstance(value, (int, float)) and math.isfinite(value):
        state, error = TrialState.COMPLETE, None
    elif process.returncode == 0 and value is None:
        state, error = TrialState.FAIL, f"its metrics.json has no {sweep.search.objective}"
    elif process.returncode == 0:
        state, error = TrialState.FAIL, f"the objective {sweep.search.objective} ended as {value}"
    elif sweep.stop.is_set() and process.returncode < 0:
        state, error = TrialState.FAIL, None  # stopped with the tune process (Ctrl-C): interrupted
    else:
        state, error = TrialState.FAIL, last_error_line(log) or f"exit status {process.returncode}"
    if error is not None:
        trial.set_user_attr(ERROR, error)
    _end(sweep, trial, state, value if state == TrialState.COMPLETE else None, run_dir)
    _say(sweep, trial, state, value, error, seconds, attrs.get(PRUNED_AT), log)
    return spare


def launch_run(
    spare: subprocess.Popen[bytes] | None, args: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Hand the trial to the spare process, or start it afresh when there is none or it has died."""
    if spare is not None and spare.poll() is None and spare.stdin is not None:
        try:
            spare.stdin.write((json.dumps({"args": args, "env": env, "log": str(log)}) + "\n").encode())
            spare.stdin.close()
            return spare
        except OSError:  # it died just now (BrokenPipeError): start the trial afresh
            spare.kill()
            spare.wait()
    with log.open("ab") as out:
        command = [sys.executable, "-m", PACKAGE, *args]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_trial_env() | env)


def _trial_env() -> dict[str, str]:
    """This process's environment, less what would tie a trial to tune's own run directory."""
    return {k: v for k, v in os.environ.items() if not k.startswith(f"{PACKAGE.upper()}_RUN_DIR")}


def overrides(params: dict[str, Any]) -> list[str]:
    """A trial's parameters as dotted command-line options (lists and mappings as the YAML text they are)."""
    args = []
    for name, value in params.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True)
        args += [f"--{name}", text.removesuffix("\n...\n").strip()]
    return args


def _end(
    sweep: Sweep, trial: optuna.trial.Trial, state: TrialState, value: float | None, run_dir: Path | None
) -> None:
    with sweep.lock:
        sweep.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    if run_dir is not None and run_dir.is_dir():
        record = {
            "study": sweep.study.study_name,
            "number": trial.number,
            "state": state.name,
            "value": value,
            "params": trial.params,
        }
        with atomic_write(run_dir / "trial.json") as f:
            f.write(json.dumps(record, indent=2) + "\n")


def _say(
    sweep: Sweep,
    trial: optuna.trial.Trial,
    state: TrialState,
    value: Any,
    error: str | None,
    seconds: float,
    pruned_at: int | None,
    log: Path,
) -> None:
    params = ", ".join(f"{name.rsplit('.', 1)[-1]}={_short(v)}" for name, v in trial.params.items())
    if state == TrialState.COMPLETE:
        outcome = f"{sweep.search.objective}={value:.4g}"
    elif state == TrialState.PRUNED:
        outcome = f"pruned after epoch {pruned_at}"
    elif error is None:
        outcome = "interrupted"
    else:
        outcome = f"failed: {error} (log: {log})"
    finished = sum(counted(t) for t in sweep.study.get_trials(deepcopy=False))
    print(
        f"trial {trial.number} [{finished}/{sweep.n_trials}] {outcome} ({params}) in {seconds:.0f} s",
        flush=True,
    )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _grid_done(sweep: Sweep) -> bool:
    """Whether a grid search has visited every point (a queued retry of an interrupted one aside)."""
    sampler = sweep.study.sampler
    waiting = sweep.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return (
        isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(sweep.study) and not waiting
    )


def _trial_id(sweep: Sweep, number: int) -> int:
    study_id = sweep.storage.get_study_id_from_name(sweep.study.study_name)
    return sweep.storage.get_trial_id_from_study_id_trial_number(study_id, number)


def _alive(worker: dict[str, Any]) -> bool:
    """Whether the tune process that ran a trial on this machine still runs (and is that process,
    not a later one given the same pid)."""
    pid = int(worker.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return worker.get("start") is None or worker.get("start") == _start_time(pid)


def _start_time(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (Linux); None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def last_error_line(log: Path) -> str | None:
    """The error line a failed trial printed last (the CLI's `error: ...`, or a traceback's last line)."""
    try:
        return error_line(log.read_text(errors="replace"))
    except OSError:
        return None


def error_line(output: str) -> str | None:
    """The error a command printed last: its last `error: ...` line (without the prefix), else its
    last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else None
