"""Failures a user can meet get one `error:` line and lose nothing: a bad `pretrained:` checkpoint, a
full disk during a save, data that does not fit the model; files a run writes respect the umask, and
W&B's staged files stay inside the run directory."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from project.checkpoint_io import AtomicCheckpointIO, check_checkpoint
from project.cli import main
from project.data import DigitsDataModule, Split
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, cli_args

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
FROZEN = CONFIGS / "digits_frozen_encoder.yaml"
LIMIT = str(CONFIGS / "debug" / "limit.yaml")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (torch.zeros(3), "is not a Lightning checkpoint (it has no state_dict)"),
        ({"state_dict": {}, "extra": argparse.Namespace(x=1)}, "holds objects the safe loader refuses"),
        (b"truncated", "is truncated or not a checkpoint"),
    ],
)
def test_a_bad_pretrained_checkpoint_is_one_line(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, message: str
) -> None:
    source = tmp_path / "earlier" / "checkpoints" / "last.ckpt"
    source.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        torch.save(content, source)
    config = tmp_path / "frozen.yaml"
    config.write_text(FROZEN.read_text().replace("runs/REPLACE-WITH-THE-AE-RUN", str(source.parent.parent)))
    config.write_text(config.read_text().replace("checkpoint: best", "checkpoint: last"))
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", str(config), "--config", LIMIT, runs_dir=runs_dir))
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert line.startswith("error: pretrained: ") and str(source) in line and message in line, line


class WrongShapeDigits(DigitsDataModule):
    image_shape = (1, 4, 4)  # declared wrong: the samples are 8x8


def test_data_that_does_not_fit_the_model_names_both_shapes(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--config", LIMIT,
                      "--data", "tests.test_failures.WrongShapeDigits", runs_dir=runs_dir))  # fmt: skip
    line = one_error_line(capsys)
    assert "built for inputs of shape (1, 4, 4)" in line and "a batch holds (1, 8, 8)" in line, line
    assert "image_shape" in line and "model.init_args.in_shape" in line


@pytest.fixture
def small_disk(tmp_path: Path) -> object:
    """A 3 MiB tmpfs: a real full disk. Needs root (as CI and this project's machines run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_keeps_earlier_checkpoints(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Measure one checkpoint of this run, then leave room on the disk for one and a half of them.
    csv_only = "[{class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: ., name: csv}}]"
    quiet = ["--test_after_fit", "false", "--trainer.logger", csv_only]
    probe = main(cli_args("fit", "--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "1", *quiet,
                          runs_dir=tmp_path / "probe"))  # fmt: skip
    assert probe is not None
    size = (probe.run_dir / "checkpoints" / "last.ckpt").stat().st_size
    capsys.readouterr()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - int(1.5 * size) - 64 * 1024))
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", DIGITS, "--config", LIMIT, "--run_name", "full", *quiet,
                      runs_dir=small_disk / "runs"))  # fmt: skip
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert "could not save checkpoint" in line and "No space left on device" in line, line
    saved = list((small_disk / "runs" / "full" / "checkpoints").glob("*.ckpt"))
    assert saved, "the first checkpoint fitted on the disk"
    for path in saved:
        check_checkpoint(path)  # whole and readable
    assert not list((small_disk / "runs" / "full" / "checkpoints").glob(".*.tmp"))  # the partial file is gone


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_and_splits_respect_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
        Split.random(20, val_fraction=0.2, seed=0).save(tmp_path / "split.json")
    finally:
        os.umask(previous)
    for name in ("last.ckpt", "split.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.slow
def test_wandb_staged_files_stay_in_the_run_directory(
    runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home_data"))  # where W&B's default would be
    with_tables = str(CONFIGS / "digits.yaml")  # the visual callbacks' W&B tables are staged files
    cli = main(cli_args("fit", "--config", with_tables, "--config", LIMIT, runs_dir=runs_dir))
    assert cli is not None
    outside = list((tmp_path / "home_data").rglob("*"))
    assert not [p for p in outside if p.is_file()], outside
    staged = [p for p in (cli.run_dir / "wandb" / "artifacts" / "staging").rglob("*") if p.is_file()]
    assert staged  # the visual callbacks' tables, beside the offline run
