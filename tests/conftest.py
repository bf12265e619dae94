"""Shared fixtures: everything on CPU, offline, in tmp dirs, and small."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
# The machine's temporary folder, before the session moves tempfile's into its own (below): other users
# can reach it (the PostgreSQL test's server runs as `postgres`).
SYSTEM_TEMP = Path(tempfile.gettempdir())

# configs/digits.yaml without its visual callbacks, for the tests that look at no picture: each drawn
# epoch costs ~1 s of a 2-core CPU, most of a short test fit. Everything else (W&B, checkpoints, the
# other callbacks) is the shipped config's. Written from the real file when the session starts, so it
# never drifts from it, under the same file name (runs are named after it).
VISUALS_LINE = "callbacks+: visuals.yaml"
_SESSION_CONFIGS = Path(tempfile.mkdtemp(prefix="project-test-configs-"))
atexit.register(shutil.rmtree, _SESSION_CONFIGS, ignore_errors=True)
DIGITS_NO_VISUALS = _SESSION_CONFIGS / "digits.yaml"
assert VISUALS_LINE in (CONFIGS / "digits.yaml").read_text()
DIGITS_NO_VISUALS.write_text((CONFIGS / "digits.yaml").read_text().replace(VISUALS_LINE, ""))


@pytest.fixture(autouse=True, scope="session")
def _offline_wandb(tmp_path_factory: pytest.TempPathFactory) -> None:
    """W&B offline, with its config and cache kept out of the user's home directory."""
    home = tmp_path_factory.mktemp("wandb_home")
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_CONFIG_DIR"] = str(home / "config")
    os.environ["WANDB_CACHE_DIR"] = str(home / "cache")
    os.environ["WANDB_DATA_DIR"] = str(home / "data")


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_in_the_session_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Temporary files go under this session's pytest folder (pytest keeps the last three), not /tmp:
    the subprocesses' (inherited TMPDIR), and this process's from here on. What a run that a test kills
    leaves there (W&B's media folders, torchrun's) then goes with the session."""
    folder = tmp_path_factory.mktemp("tmp")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = str(folder)


# Set by pytest-xdist in its workers (`make test` runs two): each then gets one core's share.
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, 2 // XDIST_WORKERS)


@pytest.fixture(autouse=True, scope="session")
def _threads_per_worker() -> None:
    """Two cores: intra-op threads beyond them only contend with DataLoader workers and W&B; with two
    xdist workers, one each (CLI subprocesses inherit OMP_NUM_THREADS)."""
    if XDIST_WORKERS > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(THREADS)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def cli_args(*args: str, runs_dir: Path) -> list[str]:
    """Arguments for `project.cli.main` that keep the run's outputs under `runs_dir`."""
    return [*args, "--trainer.default_root_dir", str(runs_dir)]


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir


def unused_port() -> int:
    """A local port nobody listens on (connecting is refused at once), free for a server to bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_wandb_service() -> dict[str, str]:
    """The environment for a subprocess with a W&B service of its own, as a real job has. wandb exports
    WANDB_SERVICE, so children would otherwise share this test process's service (which outlives a
    killed child and keeps its run id in use)."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def read_offline_run(offline_run: Path) -> dict[str, object]:
    """Read an offline W&B run folder back with W&B's own tool, as a user would inspect it."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(offline_run)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    summary: dict[str, object] = json.loads(out.stdout)
    return summary


def read_wandb_summary(run_dir: Path) -> dict[str, object]:
    """The summary of the one offline W&B run in a run directory."""
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    return read_offline_run(offline_run)


def kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL `process` as soon as `ready()` holds (polled every 50 ms); fails if it ended first."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"


# The test files that take longest (measured with --durations on 2 cores), longest first. Under xdist's
# loadfile, files go to whichever worker is free in collection order: the long ones first, so the two
# workers end together rather than one idling while the other runs a long file. Files not listed
# follow, those with more slow tests first. A stale list only costs balance, never a test.
LONGEST_FIRST = [
    "test_sweep.py", "test_cli.py", "test_recovery.py", "test_resume_mid_epoch.py", "test_resilience.py",
    "test_sweep_workers.py", "test_distributed.py", "test_readme_commands.py", "test_rename.py",
    "test_callbacks.py",
]  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if XDIST_WORKERS <= 1:
        return
    slow = Counter(item.path.name for item in items if item.get_closest_marker("slow"))

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return (LONGEST_FIRST.index(name), 0) if name in LONGEST_FIRST else (len(LONGEST_FIRST), -slow[name])

    items.sort(key=rank)  # stable: a file's tests keep their order


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-regress",
        action="store_true",
        default=False,
        help="rewrite the golden files of the output regression tests (tests/regress/<device>/) from "
        "this run instead of comparing against them: only after a change meant to move the numbers",
    )


@pytest.fixture
def regen_regress(request: pytest.FixtureRequest) -> bool:
    """Whether this run rewrites the regression golden files (`pytest -k regress --regen-regress`)."""
    return bool(request.config.getoption("--regen-regress"))
