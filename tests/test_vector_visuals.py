"""The visualization callbacks on inputs that are not images (the wine feature vectors): TopKExamples
logs its table with the feature values instead of pictures, says so once, and configs/wine.yaml carries
the visuals end to end (PNGs, top_k_table.json, the W&B table)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from lightning_utilities.core import rank_zero

from project.callbacks import TopKExamples
from project.callbacks.display import MAX_SHOWN_FEATURES, display_features, display_images
from project.cli import main
from project.data import WineDataModule
from project.model import MLPNet
from tests.conftest import CONFIGS, cli_args, read_wandb_summary

WINE = str(CONFIGS / "wine.yaml")
NO_IMAGE_PICTURES = ["error_vs_entropy", "reliability", "confusion_matrix", "confusion_matrix_normalized"]
COLUMNS = ["set", "features", "true", "pred", "confidence", "entropy", "loss", "index"]


class FakeTrainer:
    def __init__(self, datamodule: Any) -> None:
        self.datamodule = datamodule


class Statistics:
    mean = [10.0, 100.0, 0.0]
    std = [2.0, 50.0, 1.0]


def test_features_are_written_in_their_own_units_and_long_vectors_are_cut() -> None:
    normalized = torch.tensor([[0.5, -1.0, 0.25]])
    (line,) = display_features(normalized, FakeTrainer(Statistics()))  # type: ignore[arg-type]
    assert line == "11, 50, 0.25"
    (long,) = display_features(torch.arange(40.0).view(1, 40), FakeTrainer(None))  # type: ignore[arg-type]
    assert long.endswith(f"{MAX_SHOWN_FEATURES - 1}, ...") and long.count(",") == MAX_SHOWN_FEATURES


def test_display_images_refuses_vectors_instead_of_misreading_them() -> None:
    with pytest.raises(ValueError, match=r"needs \(N, C, H, W\) images, got shape \(8, 13\)"):
        display_images(torch.zeros(8, 13), FakeTrainer(Statistics()))  # type: ignore[arg-type]


def test_top_k_on_wine_logs_a_features_table_and_skips_the_pictures_with_one_line(
    tmp_path: Path,
) -> None:
    pl.seed_everything(0, verbose=False)
    dm = WineDataModule(batch_size=16)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[TopKExamples(k=4)],  # the figures that need no images: the CLI test below
    )  # fmt: skip
    model = MLPNet(dm.num_classes, dm.input_shape, hidden=(8,))
    # The logger rank_zero_info writes to, listened to directly: whether it propagates to caplog's root
    # handler depends on the handlers root had when pytorch_lightning was first imported.
    records: list[logging.LogRecord] = []
    listener = logging.Handler(logging.INFO)
    listener.emit = records.append  # type: ignore[assignment]
    logger = rank_zero.log
    level = logger.level
    logger.addHandler(listener)
    logger.setLevel(logging.INFO)
    try:
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
    finally:
        logger.removeHandler(listener)
        logger.setLevel(level)

    said = [r.getMessage() for r in records if "are not images" in r.getMessage()]
    assert len(said) == 1 and "(13,)" in said[0], said  # once per run, not once per epoch
    pool = dm.load_pool()[0]
    for folder in (tmp_path / "plots/val/epoch_0", tmp_path / "plots/test/epoch_1"):
        assert not list(folder.glob("*.png"))  # top_k / bottom_k need images
        rows = json.loads((folder / "top_k_table.json").read_text())
        assert [list(row) for row in rows] == [COLUMNS] * 8
        assert [row["set"] for row in rows] == ["top_k"] * 4 + ["bottom_k"] * 4
        top = [row["loss"] for row in rows[:4]]
        assert top == sorted(top, reverse=True) and min(top) >= max(row["loss"] for row in rows[4:])
    # The values as measured (proline ~1000, hue ~1), not as the model saw them after normalization.
    for row in json.loads((tmp_path / "plots/val/epoch_0/top_k_table.json").read_text()):
        values = [float(v) for v in row["features"].split(", ")]
        assert values == pytest.approx(pool[row["index"]].tolist(), rel=1e-3)


@pytest.mark.slow  # the CLI with its W&B run
def test_the_wine_config_logs_the_visuals_to_png_json_and_wandb(runs_dir: Path) -> None:
    cli = main(
        cli_args("fit", "--config", WINE, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                 runs_dir=runs_dir)
    )  # fmt: skip
    assert cli is not None
    assert any(isinstance(c, TopKExamples) for c in cli.trainer.callbacks)  # type: ignore[attr-defined]
    (offline_run,) = (cli.run_dir / "wandb").glob("offline-run-*")
    summary = read_wandb_summary(cli.run_dir)["summary"]
    assert isinstance(summary, dict)
    for stage, weights in (("val", "epoch_0"), ("test", "best-epoch000")):
        folder = cli.run_dir / "plots" / stage / weights
        assert sorted(path.stem for path in folder.glob("*.png")) == sorted(NO_IMAGE_PICTURES)
        assert len(json.loads((folder / "top_k_table.json").read_text())) == 16
        assert f"{stage}/top_k" not in summary
        table = summary[f"{stage}/top_k_table"]
        assert table["_type"] == "table-file" and table["nrows"] == 16
        logged = json.loads((offline_run / "files" / table["path"]).read_text())
        assert logged["columns"] == COLUMNS and len(logged["data"][0][1].split(", ")) == 13
