"""Optimizers and LR schedulers come from the config: any torch.optim class with its own arguments,
the schedule's length always from the Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from project.cli import main
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, cli_args

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
LIMIT = str(CONFIGS / "debug" / "limit.yaml")

RADAM_LINEAR = """
model:
  init_args:
    optimizer:
      class_path: torch.optim.RAdam
      init_args: {lr: 0.01, decoupled_weight_decay: true, weight_decay: 0.01}
    scheduler:
      class_path: torch.optim.lr_scheduler.LinearLR
      init_args: {start_factor: 1.0, end_factor: 0.1}
"""


@pytest.mark.slow
def test_radam_and_linear_schedule_train_from_config_alone(runs_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "radam.yaml"
    config.write_text(RADAM_LINEAR)
    cli = main(
        cli_args("fit", "--config", DIGITS, "--config", LIMIT, "--config", str(config), runs_dir=runs_dir)
    )
    assert cli is not None
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.RAdam)
    assert optimizer.defaults["decoupled_weight_decay"] is True and optimizer.defaults["weight_decay"] == 0.01
    (schedule,) = cli.trainer.lr_scheduler_configs
    assert isinstance(schedule.scheduler, torch.optim.lr_scheduler.LinearLR)
    # limit.yaml: 2 epochs x 10 batches. The length was filled in; the config never typed it.
    assert schedule.scheduler.total_iters == 20 and schedule.interval == "step"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1)
    metrics = json.loads((cli.run_dir / "metrics.json").read_text())
    assert metrics["val/acc"] > 0.3  # it learned (chance: 0.1)
    # The saved config and the checkpoint hold the choice as plain values, and rebuild it.
    saved = (cli.run_dir / "config.yaml").read_text()
    assert "torch.optim.RAdam" in saved and "LinearLR" in saved
    restored = type(cli.model).load_from_checkpoint(
        cli.run_dir / "checkpoints" / "last.ckpt", weights_only=True
    )
    rebuilt = restored.make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(rebuilt, torch.optim.RAdam) and rebuilt.defaults["lr"] == 0.01
    # Saved again (a model built in Python stores the same plain spec), it still loads safely.
    trainer_path = cli.run_dir / "again.ckpt"
    cli.trainer.save_checkpoint(trainer_path)
    again = type(cli.model).load_from_checkpoint(trainer_path, weights_only=True)
    assert again.hparams["optimizer"]["init_args"]["lr"] == 0.01


def test_the_schedule_length_cannot_be_typed(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--model.init_args.scheduler.init_args.total_steps", "9",
                      runs_dir=runs_dir))  # fmt: skip
    err = capsys.readouterr().err
    assert "total_steps" in err and "Traceback" not in err


def test_help_lists_the_chosen_optimizers_own_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: the README's `python -m project fit --model.init_args.optimizer.help ...` runs as a
    # subprocess in tests/test_readme_commands.py.
    for flag, name, expected in (
        ("optimizer", "torch.optim.RAdam", ("--optimizer.decoupled_weight_decay", "--optimizer.lr")),
        ("scheduler", "torch.optim.lr_scheduler.OneCycleLR", ("--scheduler.max_lr", "--scheduler.pct_start")),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", f"--model.init_args.{flag}.help", name])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert all(option in out for option in expected), out


def test_a_schedule_over_an_endless_run_is_one_line(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--trainer.max_epochs", "-1", runs_dir=runs_dir))
    err = capsys.readouterr().err
    assert "error: the learning-rate schedule spans the whole run, but this run has no end" in err, err
    assert "Traceback" not in err
