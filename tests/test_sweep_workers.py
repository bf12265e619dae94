"""`tune` across processes: a study of DDP trials killed mid-trial continues to exactly n_trials; two
workers share a study on SQLite; two tune processes (as on two machines) share one on a real
PostgreSQL server."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from project.sweep.runner import Sweep, reap_interrupted
from project.sweep.space import load_search
from project.sweep.storage import open_storage
from tests.conftest import CONFIGS, SYSTEM_TEMP, own_wandb_service, unused_port
from tests.test_sweep import GOOD, plain, trials_csv, tune, write_search

# A trial that is itself a DDP run of two CPU processes (gloo), as the README's DDP command starts.
DDP = ["--config", str(CONFIGS / "ddp.yaml"), "--trainer.accelerator", "cpu", "--trainer.devices", "2"]


@pytest.mark.slow
def test_a_killed_study_continues_with_exactly_n_trials(tmp_path: Path) -> None:
    """Its trials are DDP runs of two CPU processes: a trial can be one, and all its ranks die with tune."""
    search = write_search(tmp_path, pruner="none", sampler="random", params=GOOD)
    args = ["--search", str(search), "--n_trials", "2", *plain(tmp_path), *DDP]
    study_dir = tmp_path / "runs" / "search"
    first = subprocess.Popen(
        [sys.executable, "-m", "project", "tune", *args], cwd=tmp_path, env=own_wandb_service(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lock = study_dir / "trial-0001" / ".lock"
    deadline = time.monotonic() + 300
    while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read() if first.stdout else ""
        time.sleep(0.2)
    trial_pid = int(lock.read_text().split("pid ")[1].split(",")[0])  # rank 0
    while not (ranks := _children(trial_pid)) and time.monotonic() < deadline:  # rank 1, started by it
        time.sleep(0.2)
    assert len(ranks) == 1, ranks
    time.sleep(1.0)  # well into trial 1
    first.send_signal(signal.SIGKILL)
    first.wait()
    for _ in range(100):  # the trial's processes die with the tune process
        if not any(_running(pid) for pid in [trial_pid, *ranks]):
            break
        time.sleep(0.1)
    assert not any(_running(pid) for pid in [trial_pid, *ranks])
    finished_before = {p.name: p.read_bytes() for p in (study_dir / "trial-0000").rglob("*") if p.is_file()}
    interrupted_before = sorted(p.name for p in (study_dir / "trial-0001").iterdir())

    again = tune(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "marked failed (interrupted)" in again.stdout
    rows = trials_csv(study_dir)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "complete"), ("1", "fail"), ("2", "complete")]
    assert "interrupted" in rows[1]["note"]
    assert rows[2]["model.init_args.hidden"] == rows[1]["model.init_args.hidden"]  # the same point, again
    after = {p.name: p.read_bytes() for p in (study_dir / "trial-0000").rglob("*") if p.is_file()}
    assert after == finished_before  # nothing a finished trial wrote is touched
    assert sorted(p.name for p in (study_dir / "trial-0001").iterdir()) == interrupted_before


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.slow
def test_two_workers_share_a_study_on_sqlite(tmp_path: Path) -> None:
    """Two trials at once; one of them is given a batch size its DataModule refuses, and fails alone:
    the study counts it, keeps its error, and ends."""
    params = {"data.init_args.batch_size": {"categorical": [64, 0]}}
    search = write_search(tmp_path, pruner="none", params=params)  # a grid: both points, once each
    done = tune("--search", str(search), "--n_trials", "2", "--workers", "2", *plain(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'runs' / 'search' / 'study.db'}")
    trials = optuna.load_study(study_name="search", storage=storage).get_trials()
    by_batch = {t.params["data.init_args.batch_size"]: t for t in trials}
    assert by_batch[64].state == optuna.trial.TrialState.COMPLETE
    assert by_batch[0].state == optuna.trial.TrialState.FAIL
    assert by_batch[0].user_attrs["error"] == "batch_size must be at least 1, got 0"
    assert "failed: batch_size must be at least 1, got 0" in done.stdout
    assert "2 of 2 trials finished (1 complete, 1 fail)" in done.stdout
    starts = sorted(
        (t.datetime_start, t.datetime_complete) for t in trials if t.datetime_start and t.datetime_complete
    )
    assert len(starts) == 2 and starts[1][0] < starts[0][1]  # the second began before the first ended


def test_looking_for_interrupted_trials_leaves_other_processes_trials_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between its two reads of the study (before and after Optuna fails the stale trials), another tune
    process on the same study starts a trial and completes one it was running: neither is taken for
    an interrupted trial, nothing is queued again. (The interleaving is forced at that point; two
    tune processes on PostgreSQL met it by chance, and the second one died of a KeyError.)"""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat=True)
    study = optuna.create_study(storage=storage, study_name="search", direction="maximize")
    finishing = study.ask()  # the other process's trial, running at the first read
    fail_stale_trials = optuna.storages.fail_stale_trials

    def meanwhile(study_: optuna.Study) -> None:
        fail_stale_trials(study_)
        study.ask()  # the other process starts a trial ...
        study.tell(finishing, 0.9)  # ... and its first one completes

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", meanwhile)
    sweep = Sweep(study, storage, url, load_search(write_search(tmp_path)), [], tmp_path, n_trials=4)
    assert reap_interrupted(sweep) == []
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A real PostgreSQL server in a temporary folder on 127.0.0.1, stopped and removed afterwards.
    PostgreSQL refuses to run as root: there it runs as the `postgres` user, in a folder of its own
    (pytest's temporary folders, and this session's tempfile folder, are private to root)."""
    if not all(shutil.which(name) for name in ("initdb", "pg_ctl")):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not on PATH")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir=SYSTEM_TEMP))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run PostgreSQL as")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", unused_port()
    initdb = [*as_user, "initdb", "-D", str(data), "-U", "optuna", "--auth=trust"]
    subprocess.run(initdb, check=True, capture_output=True)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}"
    pg_ctl = [*as_user, "pg_ctl", "-D", str(data), "-l", str(folder / "log")]
    subprocess.run([*pg_ctl, "-o", options, "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://optuna@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_tune_processes_join_one_study_on_postgresql(tmp_path: Path, postgres: str) -> None:
    search = write_search(tmp_path, pruner="none", sampler="random", params=GOOD)
    command_line = [sys.executable, "-m", "project", "tune", "--search", str(search), "--n_trials", "2"]
    command_line += ["--storage", postgres, *plain(tmp_path)]
    shells = [
        subprocess.Popen(
            command_line, cwd=tmp_path, env=own_wandb_service(), stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [shell.communicate(timeout=600)[0] for shell in shells]
    assert [shell.returncode for shell in shells] == [0, 0], outputs
    trials = optuna.load_study(study_name="search", storage=postgres).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.number for t in trials) == [0, 1]
    assert all("trial 0" in out or "trial 1" in out for out in outputs)  # each process ran one of them
