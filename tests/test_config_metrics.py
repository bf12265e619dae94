"""Metrics declared in a config add to the built-in `acc` and `f1`, and a torchmetrics class gets
what the run knows (`num_classes`, `task`): issue 18."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from project import callbacks as callback_package
from project import model as model_package
from project.cli import main
from project.data import DigitsDataModule
from project.errors import UserError
from project.model import BaseModel, ConvNet
from tests.conftest import DIGITS_NO_VISUALS, cli_args

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
KAPPA = {"name": "kappa", "fn": "torchmetrics.classification.MulticlassCohenKappa", "prediction": "logits",
         "target": "label"}  # fmt: skip


def test_config_metrics_keep_the_built_in_ones_and_the_checkpoint_monitor(tmp_path: Path) -> None:
    """The run of the issue: a `metrics` list, the default monitor val/acc, a real Trainer. Before, val/acc
    was gone (ModelCheckpoint failed at the end of epoch 1) and MulticlassCohenKappa had no num_classes."""
    model = ConvNet(10, (1, 8, 8), metrics=[KAPPA])
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=2,
        limit_val_batches=2,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[checkpoint],
    )  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    logged = set(trainer.callback_metrics)
    assert {"val/acc", "val/f1", "val/kappa", "train/acc", "train/kappa"} <= logged, logged
    assert checkpoint.best_model_path  # it found its monitor
    assert model.val_metrics["kappa"].num_classes == 10


def test_config_metrics_add_to_the_built_in_ones() -> None:
    macro = {"name": "macro_acc", "fn": "accuracy", "prediction": "logits", "target": "label",
             "args": {"average": "macro"}}  # fmt: skip
    metrics = ConvNet(3, (1, 8, 8), metrics=[macro]).create_metrics("val/")
    assert list(metrics.keys(keep_base=True)) == ["acc", "f1", "macro_acc"]  # before: only macro_acc


def test_a_task_wrapper_gets_the_task_and_num_classes() -> None:
    wrapper = {**KAPPA, "fn": "torchmetrics.CohenKappa"}
    metrics = ConvNet(7, (1, 8, 8), metrics=[wrapper]).create_metrics("val/")
    assert metrics["kappa"].num_classes == 7  # a MulticlassCohenKappa: task multiclass was filled in
    given = {**KAPPA, "args": {"weights": "quadratic"}}  # the user's args are kept beside the run's
    assert ConvNet(7, (1, 8, 8), metrics=[given]).val_metrics["kappa"].weights == "quadratic"


def test_redeclaring_a_built_in_as_it_is_changes_nothing() -> None:
    same = [{"name": "acc", "fn": "accuracy", "prediction": "logits", "target": "label", "args": {}}]
    metrics = ConvNet(3, (1, 8, 8), metrics=same).create_metrics("val/")
    assert list(metrics.keys(keep_base=True)) == ["acc", "f1"]


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ([{"name": "acc", "fn": "f1", "prediction": "logits", "target": "label"}],
         "metric 'acc': the name is taken by the built-in metric 'acc' (accuracy of logits vs label)"),
        ([KAPPA, {**KAPPA, "fn": "torchmetrics.classification.MulticlassAUROC"}],
         "metric 'kappa': the name is taken by the metric 'kappa'"),
        ([{"name": "f2", "fn": "torchmetrics.classification.MulticlassFBetaScore", "prediction": "logits",
           "target": "label"}],
         "metric 'f2': MulticlassFBetaScore needs 'beta', which the run cannot fill in: set it in the "
         "metric's args, e.g. args: {beta: ...}"),
        ([{**KAPPA, "args": {"weights": "cubic"}}], "metric 'kappa': torchmetrics.classification.Multiclass"),
    ],
)  # fmt: skip
def test_clashes_and_missing_arguments_are_one_line(metrics: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(UserError) as info:
        ConvNet(10, (1, 8, 8), metrics=metrics)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_metric_missing_an_argument_is_one_cli_error_line(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fbeta = (
        "[{name: f2, fn: torchmetrics.classification.MulticlassFBetaScore, "
        "prediction: logits, target: label}]"
    )
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--model.init_args.metrics", fbeta, runs_dir=runs_dir))
    err = capsys.readouterr().err
    assert "error: metric 'f2': MulticlassFBetaScore needs 'beta'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ---- what `fit --help` and `--model.help CLASS` show as a class's title ----------------------------


def user_facing_classes() -> list[type]:
    """Every model a config can name, and every callback of project.callbacks."""
    found = [getattr(model_package, name) for name in model_package.__all__]
    found += [getattr(callback_package, name) for name in callback_package.__all__]
    return [c for c in found if isinstance(c, type) and issubclass(c, (BaseModel, pl.Callback))]


@pytest.mark.parametrize("cls", user_facing_classes(), ids=lambda c: c.__name__)
def test_every_class_title_speaks_to_the_user(cls: type) -> None:
    """jsonargparse titles a class's help section with the first line of its own docstring (before,
    subclasses showed BaseModel's "generic over its input `E` and output `P` structs" or Lightning's
    "Abstract base class used to build new callbacks")."""
    own = cls.__dict__.get("__doc__")
    assert own, f"{cls.__name__} has no docstring of its own"
    title = own.strip().splitlines()[0]
    assert title.endswith(".") and title[0].isupper(), title  # one whole sentence, not a cut-off line
    assert "`E`" not in title and "Generic" not in title and "Abstract" not in title, title
