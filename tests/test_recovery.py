"""Recovery: last.ckpt follows every epoch (and every N steps when asked), a killed run resumes from the
epoch it reached, a moved run directory resumes in its new place, one job at a time writes to a run
directory, a broken last.ckpt gets one line (or, with --resume auto, the newest intact checkpoint),
and the saved configs land whole."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

import project.cli
from project.checkpoint_io import AtomicCheckpointIO
from project.cli import main
from project.wandb_setup import RUN_FOLDER
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, REPO, cli_args, kill_when, own_wandb_service

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
LIMIT = str(CONFIGS / "debug" / "limit.yaml")
STOP_AFTER_2 = "--trainer.callbacks+=tests.test_cli.StopAfterEpochs"
# Learning rate 0 and BatchNorm statistics frozen: the weights never change, so val/acc never improves.
NO_LEARNING = [
    "--model.init_args.scheduler.init_args.max_lr",
    "0",
    "--trainer.callbacks+=tests.test_recovery.FrozenNorms",
]


class FrozenNorms(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0


def epoch_of(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, weights_only=True)["epoch"])


def trained_epochs(run_dir: Path, version: int) -> set[int]:
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        return {int(row["epoch"]) for row in csv.DictReader(f) if row.get("train/loss")}


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "project", "fit", *args],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=own_wandb_service(),
    )  # fmt: skip


def readable(checkpoint: Path) -> bool:
    # AtomicCheckpointIO renames complete files into place: whatever is there can be read.
    return checkpoint.is_file()


@pytest.mark.slow
def test_a_killed_run_whose_metric_stopped_improving_resumes_from_the_epoch_it_reached(
    runs_dir: Path,
) -> None:
    """With the learning rate at 0, val/acc never beats epoch 0: no best checkpoint after it. last.ckpt
    still follows every epoch, so a SIGKILL costs at most the epoch in progress."""
    args = ["--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "4", "--run_name", "stuck",
            "--resume", "auto", *NO_LEARNING, "--trainer.default_root_dir", str(runs_dir)]  # fmt: skip
    last = runs_dir / "stuck" / "checkpoints" / "last.ckpt"
    kill_when(start(args), lambda: readable(last) and epoch_of(last) >= 1)
    killed_at = epoch_of(last)
    assert 1 <= killed_at < 3
    resumed = main(["fit", *args])
    assert resumed is not None and resumed.trainer.current_epoch == 4
    assert trained_epochs(resumed.run_dir, 1) == set(range(killed_at + 1, 4))  # nothing repeated
    assert sorted(p.name for p in last.parent.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 40  # the whole run


@pytest.mark.slow
def test_last_ckpt_is_refreshed_every_n_steps_and_every_epoch_when_asked(
    runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`every_n_train_steps: N` in configs/defaults.yaml (the last.ckpt entry that has it) saves
    last.ckpt every N steps, and the epoch ends still save it too."""
    configs = tmp_path / "configs"
    configs.mkdir()
    defaults = (CONFIGS / "defaults.yaml").read_text()
    assert defaults.count("every_n_train_steps: 0\n") == 1
    (configs / "defaults.yaml").write_text(
        defaults.replace("every_n_train_steps: 0\n", "every_n_train_steps: 4\n")
    )
    monkeypatch.setattr(project.cli, "CONFIG_DIR", configs)
    saves: list[tuple[str, int]] = []
    save = AtomicCheckpointIO.save_checkpoint

    def spy(
        self: AtomicCheckpointIO, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        saves.append((Path(path).name, int(checkpoint["global_step"])))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    cli = main(cli_args("fit", "--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "3",
                        *NO_LEARNING, runs_dir=runs_dir))  # fmt: skip
    assert cli is not None
    # 10 steps an epoch: every 4 steps, and at the end of each epoch (steps 10, 20, 30).
    assert {step for name, step in saves if name == "last.ckpt"} == {4, 8, 10, 12, 16, 20, 24, 28, 30}
    assert sorted(p.name for p in (cli.run_dir / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt",
        "last.ckpt",
    ]


@pytest.mark.slow
def test_a_moved_run_directory_resumes_in_its_new_place(tmp_path: Path) -> None:
    """Fit 2 of 4 epochs, move the run directory elsewhere, resume: it goes on from epoch 2 in the
    new folder, with one last.ckpt (no last-v1) and the best checkpoint still tracked."""
    old_root, new_root = tmp_path / "disk1" / "runs", tmp_path / "disk2" / "runs"
    args = ["--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "4", "--run_name", "mover",
            "--resume", "auto"]  # fmt: skip
    first = main(cli_args("fit", *args, STOP_AFTER_2, runs_dir=old_root))
    assert first is not None and first.trainer.current_epoch == 2
    new_root.mkdir(parents=True)
    shutil.move(old_root / "mover", new_root / "mover")

    resumed = main(cli_args("fit", *args, runs_dir=new_root))
    assert resumed is not None and resumed.run_dir == new_root / "mover"
    assert resumed.trainer.current_epoch == 4 and resumed.trainer.global_step == 40
    assert trained_epochs(resumed.run_dir, 1) == {2, 3}
    files = sorted(p.name for p in (resumed.run_dir / "checkpoints").iterdir())
    assert len(files) == 2 and files[0].startswith("best-epoch") and files[1] == "last.ckpt", files
    metrics = json.loads((resumed.run_dir / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == str(resumed.run_dir.resolve() / "checkpoints" / files[0])
    scores = []
    for version in (0, 1):
        with open(resumed.run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
            scores += [float(row["val/acc"]) for row in csv.DictReader(f) if row.get("val/acc")]
    assert metrics["best_score"] == pytest.approx(max(scores))
    assert not old_root.joinpath("mover").exists()


@pytest.mark.slow
def test_a_second_job_on_a_run_directory_is_refused_until_the_first_is_killed(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "3", "--run_name", "shared",
            "--resume", "auto", "--trainer.default_root_dir", str(runs_dir)]  # fmt: skip
    first = start(args)
    lock = runs_dir / "shared" / ".lock"
    last = runs_dir / "shared" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while (
            not (lock.is_file() and f"pid {first.pid}," in lock.read_text()) and time.monotonic() < deadline
        ):
            assert first.poll() is None, "the first job ended early"
            time.sleep(0.05)
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert f"is in use by another job (host {socket.gethostname()}, pid {first.pid}, since" in line
        kill_when(first, lambda: readable(last))
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The killed job's lock went with it: the same command takes over and finishes the run.
    resumed = main(["fit", *args])
    assert resumed is not None and resumed.trainer.current_epoch == 3
    assert len(list((runs_dir / "shared" / "wandb").glob("offline-run-*"))) == 2  # one W&B run, two parts
    assert not list((runs_dir / "shared" / "checkpoints").glob("last-v*"))


@pytest.mark.slow
def test_a_job_killed_before_its_first_checkpoint_restarts_into_the_same_wandb_run(runs_dir: Path) -> None:
    args = ["--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "2", "--run_name", "early",
            "--resume", "auto", "--trainer.default_root_dir", str(runs_dir)]  # fmt: skip
    run_dir = runs_dir / "early"
    kill_when(start(args), lambda: any((run_dir / "wandb").glob("offline-run-*")))
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    again = main(["fit", *args])
    assert again is not None and again.trainer.current_epoch == 2
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    ids = {match["id"] for p in parts if (match := RUN_FOLDER.fullmatch(p.name))}
    assert len(parts) == 2 and len(ids) == 1, parts  # a part started in the same second ends in -1


@pytest.mark.slow
def test_a_truncated_last_checkpoint_gets_one_line_or_the_newest_intact_one(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "3", "--run_name", "cut"]
    first = main(cli_args("fit", *args, STOP_AFTER_2, runs_dir=runs_dir))
    assert first is not None
    folder = first.run_dir / "checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()

    # --ckpt_path last: the file Lightning would pick gets the same line as when given by its path.
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", *args, "--ckpt_path", "last", runs_dir=runs_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: checkpoint {last} is truncated or not a checkpoint")

    # --resume auto (an unattended job): goes on from the newest intact checkpoint, saying so.
    (best,) = folder.glob("best-epoch*.ckpt")
    resumed = main(cli_args("fit", *args, "--resume", "auto", runs_dir=runs_dir))
    assert resumed is not None and resumed.trainer.current_epoch == 3
    err = capsys.readouterr().err
    assert f"warning: checkpoint {last} is truncated or not a checkpoint" in err
    assert f"resuming from {best}, the newest intact checkpoint" in err
    assert trained_epochs(resumed.run_dir, 1) == set(range(epoch_of(best) + 1, 3))
    assert epoch_of(last) == 2  # whole again

    # Nothing intact left: one line.
    for checkpoint in folder.glob("*.ckpt"):
        checkpoint.write_bytes(b"broken")
    with pytest.raises(SystemExit):
        main(cli_args("fit", *args, "--resume", "auto", runs_dir=runs_dir))
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"there is no other intact checkpoint in {folder} to resume from" in err


@pytest.mark.slow
def test_saved_configs_land_whole_with_the_umask_mode(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed: list[str] = []
    replace = os.replace

    def spy(src: Any, dst: Any, **kwargs: Any) -> None:
        renamed.append(Path(dst).name)
        replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    previous = os.umask(0o027)
    try:
        cli = main(cli_args("fit", "--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "1",
                            "--run_name", "cfg", "--test_after_fit", "false", runs_dir=runs_dir))  # fmt: skip
    finally:
        os.umask(previous)
    assert cli is not None
    config = cli.run_dir / "config.yaml"
    assert "config.yaml" in renamed  # written beside, then renamed into place
    assert config.stat().st_mode & 0o777 == 0o640
    assert "max_epochs: 1" in config.read_text()
    assert not [p for p in cli.run_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_chaos_benchmark_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/chaos.py with one kill in a 2-epoch fit (~40 s): it survives, redoes at most an
    epoch, ends with the unbroken run's weights, leaves nothing behind and keeps one W&B run."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _common
    import chaos

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    try:
        root = ["--root", str(tmp_path / "runs"), "--config", DIGITS]  # DIGITS: no pictures to draw
        summary = chaos.main(["--kills", "1", "--epochs", "2", *root])
    finally:
        for name in ("chaos", "_common"):
            sys.modules.pop(name, None)
    assert summary["kills survived"] == "1/1" and summary["max redone steps"] <= 10
    assert summary["weights equal unbroken"] is True and summary["files left behind"] == 0
    assert summary["W&B runs"] == 1 and summary["W&B parts readable"] == "2/2"
    assert (tmp_path / "results" / "chaos.json").is_file()


def test_the_wandb_run_id_is_read_past_a_same_second_suffix(tmp_path: Path) -> None:
    """W&B adds `-1` to the folder of a run part that starts in the second its previous part did (a
    kill at start-up, restarted at once); the id is still the one before it."""
    from project.wandb_setup import wandb_run_id

    assert wandb_run_id(tmp_path) is None
    (tmp_path / "wandb" / "offline-run-20261202_150406-21cov8az").mkdir(parents=True)
    os.utime(tmp_path / "wandb" / "offline-run-20261202_150406-21cov8az", (1, 1))
    (tmp_path / "wandb" / "offline-run-20261202_150406-21cov8az-1").mkdir()
    assert wandb_run_id(tmp_path) == "21cov8az"
