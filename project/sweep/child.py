"""What a trial's process gets from the `tune` process that started it: the study to report to, through
one environment variable (so the trial's saved config stays an ordinary fit's, and a storage password
never lands in a config file or in W&B), and a lifeline: the trial ends when `tune` ends, however it
ends, SIGKILL included, so a killed sweep leaves no orphan training on.

`python -m project.sweep.child` is a trial's process started ahead of its trial (runner.py keeps one
spare per worker): it pays a fit's start-up, the imports of torch and Lightning (most of the seconds
before a fit's first step), while the tune process checks the base command or the previous trial
trains, then waits for its trial on stdin (one JSON line: the fit's arguments, the trial's environment
variables, its log file) and runs it as `python -m project` would. The first worker's spare also runs
tune's check of the base command (`fit --print_config`) before its trial, so that check costs no
process of its own."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from typing import Any

from project.quick_exit import run_then_exit
from project.startup_gc import hold_full_collections, release_full_collections
from project.wandb_setup import import_wandb_early

TRIAL_ENV = "PROJECT_TRIAL"  # {"storage", "study", "trial_id", "objective"}; DDP ranks inherit it
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PRUNED_AT = "pruned_at_epoch"  # trial user attributes TrialReport sets and the tune process reads
MISSING = "objective_missing"


def trial_context() -> dict[str, Any] | None:
    """The study and trial this process reports to, or None outside a sweep."""
    text = os.environ.get(TRIAL_ENV)
    return json.loads(text) if text else None


def die_with_parent() -> None:
    """In a trial's processes (and the DDP ranks they start), ask Linux to kill this process when its
    parent dies. Elsewhere (outside a sweep, or not on Linux) a no-op."""
    if TRIAL_ENV in os.environ:
        _lifeline()


def _lifeline() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def serve() -> None:
    """Run as a spare trial process: import the CLI now, then run what tune sends (see above)."""
    if sys.argv[1:]:  # a DDP rank Lightning started again with the trial's arguments: a trial process
        die_with_parent()
        run_command()
        return
    _lifeline()
    import_wandb_early(["fit"])  # a trial is a fit: W&B's imports before torch's, as __main__ does
    import project.cli  # noqa: F401  # the seconds this process is started early for

    release_full_collections()

    while line := sys.stdin.readline():  # empty at EOF: the study needs no more trials from this worker
        job = json.loads(line)
        if "check" in job:  # tune's check of the base command, before any trial: then wait on
            code = run_captured(job["check"], job["out"], job["err"])
            os.write(1, f"{code}\n".encode())  # tune reads this line from the pipe
            continue
        os.environ.update(job["env"])
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(log, 1)  # what the trial prints goes to its log, as a cold-started trial's does
        os.dup2(log, 2)
        os.close(log)
        sys.argv[1:] = job["args"]  # Lightning's DDP launcher starts the other ranks with sys.argv
        run_command()
        return


def run_captured(args: list[str], out: str, err: str) -> int:
    """`python -m project ARGS` in this process, its output in the files `out` and `err`: its exit code."""
    saved = os.dup(1), os.dup(2)
    code: int = 0
    try:
        with open(out, "w") as out_file, open(err, "w") as err_file:
            os.dup2(out_file.fileno(), 1)
            os.dup2(err_file.fileno(), 2)
            sys.argv[1:] = args
            try:
                run_command()
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else int(done.code is not None)
            except Exception:  # reported like an uncaught error of `python -m project` would be
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
    return code


def run_command() -> None:
    """`python -m project ...` on sys.argv (the dispatch of project/__main__.py)."""
    from project.__main__ import dispatch

    dispatch()


if __name__ == "__main__":
    hold_full_collections()  # until the imports are done (serve, or dispatch): see startup_gc.py
    run_then_exit(serve)  # without the interpreter's ~2 s teardown of torch and Lightning
