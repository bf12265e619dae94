"""Shared fixtures: everything on CPU, offline, in tmp dirs, and small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True, scope="session")
def _offline_wandb(tmp_path_factory: pytest.TempPathFactory) -> None:
    """W&B offline, with its config and cache kept out of the user's home directory."""
    home = tmp_path_factory.mktemp("wandb_home")
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_CONFIG_DIR"] = str(home / "config")
    os.environ["WANDB_CACHE_DIR"] = str(home / "cache")
    os.environ["WANDB_DATA_DIR"] = str(home / "data")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Two cores: intra-op threads beyond that only contend with DataLoader workers and W&B.
    torch.set_num_threads(2)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def cli_args(*args: str, runs_dir: Path) -> list[str]:
    """Arguments for `project.cli.main` that keep the run's outputs under `runs_dir`."""
    return [*args, "--trainer.default_root_dir", str(runs_dir)]


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir
