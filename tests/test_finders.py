"""`lr_find` and `scale_batch_size` (project/finders.py): Lightning's Tuner on a real digits config."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning.tuner.lr_finder import _LRFinder

from project.data.device_loader import DeviceBatches
from project.finders import LR_KEY, MAX_LR_KEY, lr_find, scale_batch_size, steepest_fall, training_samples
from project.runs import runs_command
from tests.conftest import CONFIGS, only_run_dir

DIGITS = str(CONFIGS / "digits.yaml")


class FixedStep(torch.optim.SGD):
    """An optimizer whose learning rate is not an argument: nothing for lr_find to set."""

    def __init__(self, params: object) -> None:
        super().__init__(params, lr=0.1)  # type: ignore[arg-type]


def finder_args(runs_dir: Path, *more: str) -> list[str]:
    return ["--config", DIGITS, "--trainer.default_root_dir", str(runs_dir), *more]


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_lr_find_writes_plot_and_suggestion_and_prints_the_override(
    runs_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(DIGITS)
    args = finder_args(runs_dir, "--num_training", "40", "--min_lr", "1e-6")
    monkeypatch.setattr(sys, "argv", ["python -m project", "lr_find", *args])  # as __main__ is called
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr_find(args)
    assert not [w for w in caught if "args parameter" in str(w.message)]  # no warning about its own args
    out = capsys.readouterr().out
    run_dir = only_run_dir(runs_dir)
    assert "lr_find" in run_dir.name
    result = json.loads((run_dir / "lr_find.json").read_text())
    assert len(result["lr"]) == len(result["loss"]) == 40
    assert result["lr"][0] == pytest.approx(1e-6, rel=0.5) and result["lr"][-1] <= 1.0
    # The suggestion is the steepest fall of the curve it saved, and the override says so.
    index = steepest_fall(result["loss"])
    assert index is not None and result["suggestion"] == result["lr"][index]
    assert f"--{LR_KEY} {result['suggestion']:.3g}" in out
    assert f"--{MAX_LR_KEY} {result['suggestion']:.3g}" in out  # digits.yaml trains with OneCycleLR
    assert (run_dir / "lr_find.png").stat().st_size > 10_000
    assert digest(DIGITS) == before  # the user's config is left as it was
    assert not list(run_dir.glob(".lr_find*.ckpt")) and not (run_dir / "checkpoints").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"  # no test follows it
    # `runs` lists it as what it was: a finder's run, not a finished training run.
    (row,) = [line for line in runs_command([str(runs_dir)]).splitlines() if run_dir.name in line]
    assert row.split()[-1] == "lr_find", row


def test_steepest_fall_is_taken_against_log_lr_not_lr() -> None:
    """Lightning 2.6's own suggestion (slope against lr) is pulled to the smallest learning rates by
    their noise; ours picks the clear fall of the loss in the middle of the sweep."""
    steps = 100
    lrs = [1e-8 * (1e8) ** ((i + 1) / steps) for i in range(steps)]
    fall = [2.3 - 1.5 / (1 + math.exp(-(i - 60) / 4)) for i in range(steps)]  # falls around step 60
    noise = torch.Generator().manual_seed(0)
    losses = [value + 0.01 * float(torch.randn(1, generator=noise)) for value in fall]
    finder = _LRFinder(mode="exponential", lr_min=1e-8, lr_max=1.0, num_training=steps)
    finder.results = {"lr": lrs, "loss": losses}
    assert abs(lrs.index(finder.suggestion()) - 60) > 15  # Lightning's: far from the fall
    index = steepest_fall(losses)
    assert index is not None and abs(index - 60) <= 3
    assert steepest_fall([2.0] * 30) is None  # no fall, no suggestion
    losses[60] = float("nan")  # non-finite points are skipped, not bridged
    index = steepest_fall(losses)
    assert index is not None and index != 60 and abs(index - 60) <= 4


@pytest.mark.slow
def test_scale_batch_size_finds_the_largest_batch_and_reports_its_bound(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(DIGITS)
    scale_batch_size(finder_args(runs_dir, "--steps_per_trial", "1"))
    out = capsys.readouterr().out
    run_dir = only_run_dir(runs_dir)
    result = json.loads((run_dir / "scale_batch_size.json").read_text())
    # On a CPU nothing runs out of memory: the doubling (64, 128, ...) stops at the training split.
    train = len(json.loads((run_dir / "split.json").read_text())["train"])
    assert result["batch_size"] == train and result["start"] == 64
    assert result["bounded_by"] == f"the training split's {train} samples"
    assert f"--data.init_args.batch_size {train}" in out
    assert digest(DIGITS) == before


def test_training_samples_of_both_loaders() -> None:
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    batches = DeviceBatches(images, torch.zeros(10, dtype=torch.long), torch.arange(10), 4, [0.0], [1.0])
    assert training_samples(batches) == 10
    assert (
        training_samples(
            torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(7)), batch_size=2)
        )
        == 7
    )
    assert training_samples(iter([1, 2])) is None


@pytest.mark.parametrize(
    ("more", "problem"),
    [
        (
            ["--model.init_args.optimizer", "tests.test_finders.FixedStep"],
            "lr_find needs an optimizer with an lr argument, and FixedStep has none",
        ),
        (["--resume", "auto"], "lr_find starts from the config's initial weights"),
        (["--trainer.devices", "2"], "lr_find runs on one device: add --trainer.devices 1"),
    ],
)
def test_lr_find_refuses_in_one_line_and_writes_nothing(
    runs_dir: Path, capsys: pytest.CaptureFixture[str], more: list[str], problem: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        lr_find(finder_args(runs_dir, *more))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert problem in err[-1] and err[-1].startswith("error: "), err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


@pytest.mark.parametrize("finder, command", [(lr_find, "lr_find"), (scale_batch_size, "scale_batch_size")])
def test_finder_help_and_errors_name_the_finder_not_fit(
    finder: Any, command: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finder is parsed as `fit`, but its --help and its errors speak of the command the user typed."""
    with pytest.raises(SystemExit) as exit_info:
        finder(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m project {command} [--config FILE]")
    assert "Lightning's Tuner" in out.split("\n\n")[1]  # the description under usage: this command's
    with pytest.raises(SystemExit) as exit_info:
        finder(finder_args(runs_dir, "--trainer.max_epoch", "3"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith(f"error: trainer.max_epoch is not an option of `{command}`"), err
    assert err[-1] == f"All options: python -m project {command} --help"
