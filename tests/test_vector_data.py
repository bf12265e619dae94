"""Non-image inputs: the DataModule contract for vectors (declared shape, statistics computed from the
training split, one-line errors for what a subclass forgot), the runnable docstring example, and the
wine example (WineDataModule + MLPNet + configs/wine.yaml) trained by a real Trainer and the CLI."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

import project.data.base
from project.cli import main
from project.data import Augmentation, ClassificationDataModule, DigitsDataModule, WineDataModule
from project.errors import UserError
from project.model import MLPNet
from tests.conftest import CONFIGS, cli_args

WINE = str(CONFIGS / "wine.yaml")
FAST_DEV_RUN = str(CONFIGS / "debug" / "fast_dev_run.yaml")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


# ---- the contract ------------------------------------------------------------------------------


def test_the_docstring_example_runs() -> None:
    doc = project.data.base.__doc__
    assert doc is not None
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert match is not None, "data/base.py's docstring has no indented example block"
    exec(compile(textwrap.dedent(match.group(1)), "data/base.py docstring", "exec"), {})


def test_a_vector_dataset_declares_its_shape_and_gets_per_feature_statistics() -> None:
    dm = WineDataModule(batch_size=16)
    assert dm.input_shape == (13,) and dm.image_shape == (13,) and not dm.is_image
    assert "mean" not in vars(WineDataModule) and not hasattr(dm, "mean")  # not hand-typed
    dm.setup("fit")
    assert dm.split is not None
    pool = dm.load_pool()[0].double()
    train = pool[dm.split.train]
    torch.testing.assert_close(torch.tensor(dm.mean, dtype=torch.float64), train.mean(0))
    torch.testing.assert_close(torch.tensor(dm.std, dtype=torch.float64), train.std(0, unbiased=False))
    # From the train split only: the whole pool's statistics differ.
    assert not torch.allclose(torch.tensor(dm.mean, dtype=torch.float64), pool.mean(0))
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (16, 13) and batch.image.dtype == torch.float32
    normalized = torch.stack([dm.datasets["train"][i].image for i in range(len(dm.datasets["train"]))])
    torch.testing.assert_close(normalized.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.std(0, unbiased=False), torch.ones(13), atol=1e-5, rtol=0)


def test_a_test_only_run_normalizes_with_the_same_training_statistics() -> None:
    fitted = WineDataModule()
    fitted.setup("fit")
    tested = WineDataModule()  # as in `python -m project test --ckpt_path ...`: no fit first
    tested.setup("test")
    assert tested.mean == fitted.mean and tested.std == fitted.std
    # dev_subset shortens the splits, not the statistics: a debug run normalizes as the full one.
    small = WineDataModule(dev_subset=8)
    small.setup("fit")
    assert small.mean == fitted.mean and len(small.datasets["train"]) == 8


def test_image_statistics_are_per_channel_in_0_to_1_scale() -> None:
    images = torch.zeros(20, 2, 3, 3, dtype=torch.uint8)
    images[:, 0] = torch.arange(20, dtype=torch.uint8).mul(10).view(20, 1, 1)  # channel 0: 0, 10, ..., 190
    images[:, 1] = 255  # channel 1: constant white

    class Pixels(ClassificationDataModule):
        class_names = ["a", "b"]
        input_shape = (2, 3, 3)

        def load_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
            return images, torch.arange(20) % 2

    dm = Pixels()
    dm.setup("fit")
    assert dm.split is not None
    channel0 = images[dm.split.train, 0].double() / 255
    torch.testing.assert_close(dm.mean, (channel0.mean().item(), 1.0))
    torch.testing.assert_close(dm.std, (channel0.std(unbiased=False).item(), 1.0))  # constant: std 1


def test_declared_statistics_and_the_older_image_shape_name_are_kept() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    assert (dm.mean, dm.std) == ((0.3053,), (0.3760,))
    assert dm.input_shape == dm.image_shape == (1, 8, 8) and dm.is_image

    class OldStyle(DigitsDataModule):
        image_shape = (1, 8, 8)  # a dataset written before input_shape existed

    assert OldStyle.input_shape == (1, 8, 8)


class _Vectors(ClassificationDataModule):
    def load_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(20, 4), torch.arange(20) % 2


class NoClassNames(_Vectors):
    input_shape = (4,)


class NoShape(_Vectors):
    class_names = ["a", "b"]


class MeanWithoutStd(_Vectors):
    class_names = ["a", "b"]
    input_shape = (4,)
    mean = (0.0, 0.0, 0.0, 0.0)


class WrongWidth(_Vectors):
    class_names = ["a", "b"]
    input_shape = (4,)
    mean = (0.0, 0.0)
    std = (1.0, 1.0)


class WithAugmentation(_Vectors):
    class_names = ["a", "b"]
    input_shape = (4,)

    def augmentation(self) -> Augmentation:
        return Augmentation(flip=True)


MISTAKES: list[tuple[type[ClassificationDataModule], str]] = [
    (NoClassNames, "NoClassNames does not declare class_names: add a class attribute such as"),
    (NoShape, "NoShape does not declare input_shape: add a class attribute such as input_shape = (13,)"),
    (MeanWithoutStd, "MeanWithoutStd declares mean but not std: declare both, or neither"),
    (WrongWidth, "WrongWidth.mean has 2 values, but its inputs of shape (4,) have 4 features"),
]


@pytest.mark.parametrize(("cls", "message"), MISTAKES, ids=[cls.__name__ for cls, _ in MISTAKES])
def test_what_a_subclass_forgot_is_one_line_naming_it(
    cls: type[ClassificationDataModule], message: str
) -> None:
    with pytest.raises(UserError) as error:
        cls()
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_a_forgotten_attribute_through_the_cli_is_one_error_line(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", WINE, "--data", "tests.test_vector_data.NoShape", runs_dir=runs_dir))
    assert exit_info.value.code == 2
    assert one_error_line(capsys).startswith("error: NoShape does not declare input_shape")


def test_image_only_features_refuse_vectors_in_one_line() -> None:
    with pytest.raises(
        UserError, match=r"^the device loader batches images .*init_args.device_loader to false$"
    ):
        WineDataModule(device_loader=True)
    with pytest.raises(UserError, match=r"^WithAugmentation.augmentation\(\) crops and flips images"):
        WithAugmentation().setup("fit")


# ---- the wine example --------------------------------------------------------------------------


def test_one_fit_step_on_wine_trains_the_mlp(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = WineDataModule(batch_size=16)
    model = MLPNet(num_classes=dm.num_classes, in_shape=dm.input_shape, hidden=(16,))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
        default_root_dir=tmp_path,  # where split.json goes
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 1
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert (tmp_path / "split.json").is_file()


def test_the_wine_config_builds_through_the_cli(runs_dir: Path) -> None:
    cli = main(cli_args("fit", "--config", WINE, "--config", FAST_DEV_RUN, runs_dir=runs_dir))
    assert cli is not None
    assert isinstance(cli.datamodule, WineDataModule) and isinstance(cli.model, MLPNet)
    assert cli.model.in_shape == (13,) and cli.model.num_classes == 3  # linked from the data
    assert cli.trainer.state.finished


@pytest.mark.slow  # 5 epochs through the CLI
def test_the_wine_config_trains_to_over_90_percent_in_a_few_epochs(tmp_path: Path) -> None:
    cli = main(cli_args("fit", "--config", WINE, "--trainer.max_epochs", "5", runs_dir=tmp_path / "runs"))
    assert cli is not None
    metrics: dict[str, Any] = json.loads((cli.run_dir / "metrics.json").read_text())
    assert metrics["epoch"] == 5
    assert metrics["val/acc"] >= 0.9 and metrics["test/acc"] >= 0.9, metrics
