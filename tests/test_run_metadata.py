"""`RunMetadata`: a run directory records the commit (and the diff of a dirty checkout), the command,
versions, packages and machine, per command; the W&B run's config holds the same."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from project.callbacks import RunMetadata
from project.callbacks.run_metadata import installed_versions
from project.data import DigitsDataModule
from project.model import ConvNet
from tests.conftest import REPO, read_wandb_summary

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def fit(root: Path, callback: RunMetadata, wandb: bool = False) -> pl.Trainer:
    """One training batch and one validation batch of digits, in run directory `root`."""
    logger: Any = WandbLogger(save_dir=str(root), offline=True) if wandb else False
    trainer = pl.Trainer(
        default_root_dir=root, accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        num_sanity_val_steps=0, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(ConvNet(10, (1, 8, 8)), datamodule=DigitsDataModule(batch_size=16))
    if wandb:
        import wandb as wandb_module

        wandb_module.finish()
    return trainer


def segments(root: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((root / "metadata.json").read_text())["segments"]
    return entries


@needs_git
def test_a_dirty_checkout_is_recorded_with_its_commit_and_a_diff_that_replays_it(tmp_path: Path) -> None:
    checkout = tmp_path / "code"
    checkout.mkdir()
    git(checkout, "init", "-q")
    (checkout / "train.py").write_text("lr = 0.1\n")
    git(checkout, "add", ".")
    git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    commit = git(checkout, "rev-parse", "HEAD")
    (checkout / "train.py").write_text("lr = 0.2\n")  # a change not committed
    (checkout / "notes.txt").write_text("new\n")  # a file git does not track
    root = tmp_path / "run"
    fit(root, RunMetadata(source=str(checkout)), wandb=True)

    (entry,) = segments(root)
    assert entry["git"]["commit"] == commit and entry["git"]["dirty"] is True
    assert entry["git"]["untracked"] == ["notes.txt"]
    assert entry["git"]["diff"] == "git-1.diff"
    # The diff replays the run's code on a clean copy of that commit.
    replay = tmp_path / "replay"
    git(tmp_path, "clone", "-q", str(checkout), str(replay))
    git(replay, "apply", str(root / "git-1.diff"))
    assert (replay / "train.py").read_text() == "lr = 0.2\n"

    assert entry["versions"]["torch"] == torch.__version__
    assert entry["versions"]["pytorch_lightning"] == pl.__version__
    assert f"torch=={version('torch')}" in entry["packages"]  # as pip freeze writes it
    assert entry["machine"]["cpus"] >= 1 and entry["machine"]["cpu"]
    # entry["command"]: tests/test_cli.py's end-to-end fit checks it is `python -m project fit ...` as typed.
    # The W&B run's config holds the same entry (all but the diff's text, which stays in the run directory).
    config: Any = read_wandb_summary(root)["config"]
    assert config["run_metadata"] == entry


@needs_git
def test_by_default_the_checkout_of_the_package_is_described(tmp_path: Path) -> None:
    fit(tmp_path, RunMetadata())
    (entry,) = segments(tmp_path)
    assert entry["git"]["commit"] == git(REPO, "rev-parse", "HEAD")
    assert entry["git"]["dirty"] == bool(git(REPO, "diff", "HEAD", "--stat"))


def test_outside_a_git_checkout_the_run_says_so_and_goes_on(tmp_path: Path) -> None:
    elsewhere = tmp_path / "installed"
    elsewhere.mkdir()
    root = tmp_path / "run"
    trainer = fit(root, RunMetadata(source=str(elsewhere)))
    assert trainer.state.finished
    (entry,) = segments(root)
    assert "commit" not in entry["git"] and "error" in entry["git"]
    assert entry["git"]["error"].startswith(("not a git checkout", "git is not installed"))


def test_each_later_command_adds_a_segment_and_keeps_the_first(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fit(tmp_path, RunMetadata(source=str(elsewhere)))
    first = segments(tmp_path)
    fit(tmp_path, RunMetadata(source=str(elsewhere)))  # a resume, or a test, in the same run directory
    both = segments(tmp_path)
    assert len(both) == 2 and both[0] == first[0]


def test_an_unreadable_metadata_file_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "metadata.json").write_text("{not json")
    fit(tmp_path, RunMetadata(source=str(elsewhere)))
    assert (tmp_path / "metadata.unreadable.json").read_text() == "{not json"
    assert len(segments(tmp_path)) == 1


def test_a_package_installed_twice_is_recorded_as_the_one_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every distribution's metadata is read once; where one name is installed in two places, the
    version recorded is the first on sys.path's (what `import` loads, what metadata.version says)."""
    for folder, number in (("first", "2.0"), ("second", "1.0")):
        info = tmp_path / folder / f"twice_installed-{number}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: twice_installed\nVersion: {number}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "second"))
    monkeypatch.syspath_prepend(str(tmp_path / "first"))
    installed = installed_versions()
    assert version("twice_installed") == "2.0"
    assert installed["twice-installed"] == ("twice_installed", "2.0")
    assert list(installed) == sorted(installed)  # by name, as pip freeze lists them
