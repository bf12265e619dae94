"""Step 8 of the guide: the worked example (examples/guide_example.py) runs through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples.guide_example import ParityDigits, ParityExample, TwoHeadNet, TwoHeadPrediction
from project.cli import main
from project.data import DigitsDataModule
from tests.conftest import CONFIGS, REPO, cli_args, read_wandb_summary

GUIDE_CONFIG = str(REPO / "examples" / "guide_example.yaml")


def test_new_example_fields_flow_through_the_data_module() -> None:
    dm = ParityDigits(batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, ParityExample)  # Example.collate keeps the subclass and its field
    assert batch.parity is not None and batch.label is not None
    assert torch.equal(batch.parity, batch.label % 2)


def test_two_heads_and_two_weighted_loss_terms() -> None:
    channels, height, width = DigitsDataModule.image_shape  # digits are images: three dimensions
    model = TwoHeadNet(10, (channels, height, width), parity_weight=0.25)
    dm = ParityDigits(batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    prediction = model(batch)
    assert isinstance(prediction, TwoHeadPrediction)
    assert prediction.logits.shape == (8, 10) and prediction.require_parity_logits().shape == (8, 2)
    loss = model.compute_loss(batch, prediction)
    assert loss.total == loss.terms["ce"] + 0.25 * loss.terms["parity"]


@pytest.mark.slow
def test_the_guide_runs_end_to_end_through_the_cli(runs_dir: Path) -> None:
    limit = str(CONFIGS / "debug" / "limit.yaml")
    cli = main(cli_args("fit", "--config", GUIDE_CONFIG, "--config", limit, runs_dir=runs_dir))
    assert cli is not None and isinstance(cli.model, TwoHeadNet)
    metrics = json.loads((cli.run_dir / "metrics.json").read_text())
    # Each loss term, the new metric and the new callback's scalar, for val and (after fit) test.
    for stage in ("val", "test"):
        for key in ("loss", "loss/ce", "loss/parity", "acc", "parity_acc", "parity_disagreement"):
            assert f"{stage}/{key}" in metrics, f"{stage}/{key}"
    assert metrics["val/parity_acc"] > 0.6
    summary = read_wandb_summary(cli.run_dir)["summary"]
    assert isinstance(summary, dict) and "train/loss/parity" in summary
    # The variant's own argument is saved, so the checkpoint loads with no extra arguments.
    restored = TwoHeadNet.load_from_checkpoint(cli.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert restored.hparams["parity_weight"] == 0.5
