"""Configs without traps: adding callbacks keeps the defaults (or says what it dropped), a fast_dev_run
leaves nothing behind, run names say which experiment they are, and --help/--print_config show the
model and data first."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from project.callbacks import NonFiniteLossGuard, RNGState
from project.cli import main
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, cli_args, only_run_dir

DIGITS = str(CONFIGS / "digits.yaml")
FAST_DEV_RUN = str(CONFIGS / "debug" / "fast_dev_run.yaml")
LIMIT = str(CONFIGS / "debug" / "limit.yaml")
# One epoch of two batches, no test after it, CSV logs only: a real fit with a real run directory.
TINY = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--test_after_fit", "false",
        "--trainer.logger=[{class_path: CSVLogger, init_args: {save_dir: ., name: csv}}]"]  # fmt: skip
REPLACED = "trainer.callbacks replaces the default callbacks"


@pytest.fixture
def digits() -> str:
    """configs/digits.yaml without its plotting callbacks (seconds per test), under the same name."""
    return str(DIGITS_NO_VISUALS)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI parses, warns, names the run and builds the real Trainer with its callbacks; only
    `Trainer.fit` itself is skipped, for what is decided before it."""

    monkeypatch.setattr(pl.Trainer, "fit", _skipped_fit)


@functools.wraps(pl.Trainer.fit)  # LightningCLI reads fit's arguments (ckpt_path, ...) from its signature
def _skipped_fit(*args: Any, **kwargs: Any) -> None:
    return None


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "my_experiment.yaml"
    path.write_text(text)
    return str(path)


def _warnings(err: str, text: str) -> list[str]:
    return [line for line in err.splitlines() if text in line]


@pytest.mark.usefixtures("no_training")
def test_callbacks_plus_adds_to_the_defaults_without_a_warning(
    tmp_path: Path, digits: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = _config(tmp_path, "trainer:\n  callbacks+:\n    - class_path: tests.test_config_traps.Mine\n")
    cli = main(cli_args("fit", "--config", digits, "--config", mine, *TINY, runs_dir=runs_dir))
    assert cli is not None
    kinds = {type(c) for c in cli.trainer.callbacks}  # type: ignore[attr-defined]
    assert {Mine, ModelCheckpoint, RNGState, NonFiniteLossGuard} <= kinds
    assert "warning" not in capsys.readouterr().err


@pytest.mark.usefixtures("no_training")
def test_replacing_the_default_callbacks_warns_naming_what_was_dropped(
    tmp_path: Path, digits: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lr_only = "trainer:\n  callbacks:\n    - class_path: pytorch_lightning.callbacks.LearningRateMonitor\n"
    for replacing in (
        ["--config", _config(tmp_path, lr_only)],  # in a config
        ["--trainer.callbacks=[{class_path: LearningRateMonitor}]"],  # on the command line
    ):
        cli = main(cli_args("fit", "--config", digits, *replacing, *TINY, runs_dir=runs_dir))
        assert cli is not None and LearningRateMonitor in {type(c) for c in cli.trainer.callbacks}  # type: ignore[attr-defined]
        (warning,) = _warnings(capsys.readouterr().err, REPLACED)
        dropped = warning.split("dropping ", 1)[1].split(";", 1)[0].split(", ")
        assert {"ModelCheckpoint", "RNGState", "NonFiniteLossGuard", "FinalMetricsFile"} <= set(dropped)
        assert "LearningRateMonitor" not in dropped  # kept: not dropped
        assert "`callbacks+:`" in warning


def test_a_fit_without_a_checkpoint_callback_warns_where_checkpoints_go(
    digits: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = main(cli_args("fit", "--config", digits, "--trainer.callbacks=[]", *TINY, runs_dir=runs_dir))
    assert cli is not None
    (warning,) = _warnings(capsys.readouterr().err, "no ModelCheckpoint")
    assert "--resume auto" in warning and "`callbacks+:`" in warning
    # What it says is what happened: Lightning's fallback wrote under <run>/<logger name>/<version>/.
    assert not (cli.run_dir / "checkpoints" / "last.ckpt").exists()
    (saved,) = cli.run_dir.glob("*/*/checkpoints/*.ckpt")
    assert saved.parent.parent.parent.name == cli.trainer.loggers[0].name


@pytest.mark.usefixtures("no_training")
def test_a_fit_with_checkpointing_off_warns(
    digits: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    off = ["--trainer.callbacks=[]", "--trainer.enable_checkpointing=false"]
    main(cli_args("fit", "--config", digits, *off, *TINY, runs_dir=runs_dir))
    assert _warnings(capsys.readouterr().err, "this fit saves no checkpoint")


@pytest.mark.slow  # runs through the CLI, seconds
def test_fast_dev_run_keeps_nothing(digits: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast = ["--config", digits, "--config", FAST_DEV_RUN, "--test_after_fit", "false"]
    cli = main(cli_args("fit", *fast, runs_dir=runs_dir))
    assert cli is not None and cli.trainer.fast_dev_run  # type: ignore[attr-defined]
    assert not runs_dir.exists()  # no run directory, not even the runs/ folder
    assert not cli.run_dir.exists()  # where its config, split and metrics.json went: removed
    assert "fast_dev_run: nothing kept" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", *fast, "--resume", "auto", "--run_name", "r", runs_dir=runs_dir))
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: trainer.fast_dev_run keeps no run directory")
    assert not runs_dir.exists()


@pytest.mark.slow
def test_fast_dev_run_from_the_command_line_leaves_no_file(tmp_path: Path) -> None:
    """The preset as the README runs it, from a fresh folder: nothing is left there or in $TMPDIR."""
    env = os.environ | {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "project", "fit", "--config", DIGITS, "--config", FAST_DEV_RUN],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fast_dev_run: nothing kept" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # no runs/
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("fast_dev_run")]


@pytest.mark.slow  # runs through the CLI, seconds
def test_runs_are_named_after_the_experiment_config(
    digits: str, runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # digits.yaml chooses model and data; the presets stacked after it choose neither.
    cli = main(cli_args("fit", "--config", digits, "--config", LIMIT, *TINY, runs_dir=runs_dir))
    assert cli is not None
    assert re.fullmatch(r"\d{8}-\d{6}-digits-convnet", cli.run_dir.name), cli.run_dir.name

    monkeypatch.setattr(pl.Trainer, "fit", _skipped_fit)  # only the names matter below
    # Repeating a run from its saved config keeps its experiment's name.
    again = main(cli_args("fit", "--config", str(cli.run_dir / "config.yaml"), runs_dir=runs_dir))
    assert again is not None and re.fullmatch(r"\d{8}-\d{6}-digits-convnet(-\d+)?", again.run_dir.name)

    named = main(cli_args("fit", "--config", digits, "--experiment", "my tune", runs_dir=runs_dir))
    assert named is not None and named.run_dir.name.endswith("-my_tune-convnet")
    (wandb_logger,) = [lg for lg in named.trainer.loggers if isinstance(lg, WandbLogger)]
    assert wandb_logger._wandb_init["name"] == named.run_dir.name  # the W&B run is named the same


@pytest.mark.slow  # runs through the CLI, seconds
def test_resume_auto_still_finds_its_run(
    digits: str, runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = cli_args(
        "fit", "--config", digits, "--resume", "auto", "--run_name", "r", *TINY, runs_dir=runs_dir
    )
    first = main(command)
    assert first is not None and not first.resuming and first.run_dir == runs_dir / "r"
    monkeypatch.setattr(pl.Trainer, "fit", _skipped_fit)
    second = main(command)
    assert second is not None and second.resuming and second.run_dir == runs_dir / "r"
    assert only_run_dir(runs_dir) == runs_dir / "r"


def test_print_config_shows_model_and_data_first_without_default_nulls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", DIGITS, "--print_config"])
    printed = capsys.readouterr().out
    keys = [line.split(":")[0] for line in printed.splitlines() if re.match(r"\w", line)]
    assert keys.index("model") < keys.index("data") < keys.index("trainer")
    assert printed.splitlines().index("model:") < 5
    config = yaml.safe_load(printed)
    (wandb,) = [lg for lg in config["trainer"]["logger"] if lg["class_path"].endswith("WandbLogger")]
    assert None not in wandb["init_args"].values()  # ~30 nulls of wandb.init's before
    assert len(printed.splitlines()) < 215  # 251 with the nulls; 200 with Throughput and log_model

    # Nothing is lost: the printed config read back prints the same config.
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(path), "--print_config"])
    assert capsys.readouterr().out == printed


def test_help_shows_model_and_data_first_under_titles_for_the_user(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", DIGITS, "--help"])
    text = capsys.readouterr().out
    titles = [line for line in text.splitlines() if re.match(r"[A-Z<].*:$", line)]
    model, data, trainer = (
        next(i for i, t in enumerate(titles) if t.startswith(w)) for w in ("Model", "Data", "Trainer")
    )
    assert model < data < trainer
    assert not [t for t in titles if "Generic" in t or t.startswith("<class")]  # no internal docstrings
    assert "`callbacks+:` adds to the default callbacks" in text
    # 585 before; the Trainer's part is what shrank (the model and data docs have grown since, to ~400).
    assert len(text.splitlines()) < 450


class Mine(LearningRateMonitor):
    """A user's callback."""
