"""project/startup_gc.py: no full pass of Python's cycle collector over the objects a command's imports
make, in `python -m project` and in a sweep's spare trial process; afterwards the collector runs with
the interpreter's own thresholds."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

from project.startup_gc import hold_full_collections, release_full_collections
from tests.conftest import DIGITS_NO_VISUALS, REPO

STATE = "COLLECTOR_STATE"


class CollectorState(pl.Callback):
    """Writes the cycle collector's state as the fit starts (the start-up over) to $COLLECTOR_STATE.
    (This module is imported by the fit it is passed to: it imports nothing heavy of its own, such as
    the sweep runner's optuna, at the top.)"""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                 "full_passes": gc.get_stats()[2]["collections"]}  # fmt: skip
        Path(os.environ[STATE]).write_text(json.dumps(state))


def fit_args(tmp_path: Path) -> list[str]:
    return ["fit", "--config", str(DIGITS_NO_VISUALS), "--trainer.fast_dev_run", "true",
            f"--trainer.callbacks+={__name__}.CollectorState",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip


def assert_start_up_left_the_imports_frozen(state: Path) -> None:
    fresh = subprocess.run([sys.executable, "-c", "import gc; print(list(gc.get_threshold()))"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    seen = json.loads(state.read_text())
    assert seen["full_passes"] == 0  # ~8, ~1.4 s on a 2-core CPU, without the hold
    assert seen["frozen"] > 100_000  # torch, Lightning, ...: ~500 000
    assert seen["threshold"] == json.loads(fresh.stdout)  # full passes again, as the interpreter has them


@pytest.mark.slow  # a fresh interpreter
def test_python_m_project_starts_up_without_a_full_collection(tmp_path: Path) -> None:
    state = tmp_path / "collector.json"
    command = [sys.executable, "-m", "project", *fit_args(tmp_path)]
    env = os.environ | {STATE: str(state)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_start_up_left_the_imports_frozen(state)


@pytest.mark.slow  # a spare trial process (sweep/child.py), started ahead as tune starts it
def test_a_sweeps_spare_process_starts_up_without_a_full_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from project.sweep.runner import run_in_spare, start_spare

    state = tmp_path / "collector.json"
    monkeypatch.setenv(STATE, str(state))
    monkeypatch.chdir(REPO)
    spare = start_spare()
    try:
        done = run_in_spare(spare, fit_args(tmp_path))
    finally:
        spare.kill()
        spare.wait()
    assert done is not None and done.returncode == 0, done and done.stderr[-3000:]
    assert_start_up_left_the_imports_frozen(state)


def test_full_collections_are_released_only_where_held() -> None:
    before = gc.get_threshold()
    release_full_collections()  # __main__.dispatch called in a test's process: nothing held, nothing changes
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    hold_full_collections()
    try:
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 1_000_000
        release_full_collections()
        assert gc.get_threshold() == before and gc.get_freeze_count() > 0
    finally:
        release_full_collections()
        gc.unfreeze()
    assert gc.get_threshold() == before
