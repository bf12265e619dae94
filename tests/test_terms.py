"""Loss terms and metrics declared in YAML, the autoencoder + classifier variant, and sub-modules
taken frozen from an earlier run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from project.cli import main
from project.errors import UserError
from project.model import AutoencoderClassifier, LatentClassifier, ReconstructionPrediction
from project.model.pretrained import checkpoint_file
from project.structs import Example
from tests.conftest import CONFIGS, cli_args, read_wandb_summary

AE = str(CONFIGS / "digits_ae.yaml")
LIMIT = str(CONFIGS / "debug" / "limit.yaml")


def batch(n: int = 4) -> Example:
    gen = torch.Generator().manual_seed(0)
    return Example(
        torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen), torch.arange(n)
    )


def test_declared_terms_are_weighted_and_read_the_fields_they_name() -> None:
    model = AutoencoderClassifier(
        10, (1, 8, 8),
        losses=[
            {"name": "ce", "fn": "cross_entropy", "prediction": "logits", "target": "label"},
            {"name": "rec", "fn": "torch.nn.L1Loss", "prediction": "reconstruction", "target": "image",
             "weight": 0.3},
        ],
    )  # fmt: skip
    example = batch()
    prediction = model(example)
    assert isinstance(prediction, ReconstructionPrediction) and prediction.reconstruction is not None
    loss = model.compute_loss(example, prediction)
    ce = torch.nn.functional.cross_entropy(prediction.logits, example.require_label())
    l1 = torch.nn.functional.l1_loss(prediction.reconstruction, example.image)
    torch.testing.assert_close(loss.terms["ce"], ce)
    torch.testing.assert_close(loss.terms["rec"], l1)
    torch.testing.assert_close(loss.total, ce + 0.3 * l1)


@pytest.mark.parametrize(
    ("term", "message"),
    [
        ({"name": "x", "fn": "mse_loss", "prediction": "reconstruktion", "target": "image"},
         "prediction 'reconstruktion' is not a field of ReconstructionPrediction; valid names: ["),
        ({"name": "x", "fn": "mse_loss", "prediction": "reconstruction", "target": "img"},
         "target 'img' is not a field of Example; valid names: ['image', 'index', 'label']"),
        ({"name": "x", "fn": "mse", "prediction": "reconstruction", "target": "image"},
         "fn 'mse' is neither one of ["),
    ],
)  # fmt: skip
def test_misnamed_fields_and_losses_list_the_valid_names(term: dict[str, str], message: str) -> None:
    with pytest.raises(UserError) as info:
        AutoencoderClassifier(10, (1, 8, 8), losses=[term])  # type: ignore[list-item]
    assert message in str(info.value)
    if "neither" in message:
        assert "mse_loss" in str(info.value)  # the valid short names are listed


def test_a_misnamed_metric_is_a_clear_cli_error(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = "[{name: acc, fn: accuracy, prediction: logit, target: label}]"
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", AE, "--model.init_args.metrics", bad, runs_dir=runs_dir))
    err = capsys.readouterr().err
    assert "error: metric 'acc': prediction 'logit' is not a field of ReconstructionPrediction" in err
    assert "'logits'" in err and "Traceback" not in err


@pytest.mark.slow
def test_autoencoder_config_logs_every_term(runs_dir: Path) -> None:
    cli = main(cli_args("fit", "--config", AE, "--config", LIMIT, runs_dir=runs_dir))
    assert cli is not None
    metrics = json.loads((cli.run_dir / "metrics.json").read_text())
    for stage in ("val", "test"):
        for key in ("loss", "loss/ce", "loss/recon", "acc", "f1", "recon_mae"):
            assert f"{stage}/{key}" in metrics, f"{stage}/{key}"
    assert metrics["val/loss"] == pytest.approx(
        metrics["val/loss/ce"] + 0.5 * metrics["val/loss/recon"], rel=1e-5
    )
    summary = read_wandb_summary(cli.run_dir)["summary"]
    assert isinstance(summary, dict)
    assert {"train/loss/ce", "train/loss/recon", "val/loss/recon", "val/recon_mae"} <= set(summary)


@pytest.mark.slow
def test_a_classifier_trains_on_a_frozen_encoder_from_an_earlier_run(runs_dir: Path, tmp_path: Path) -> None:
    ae = main(cli_args("fit", "--config", AE, "--config", LIMIT, "--run_name", "ae", runs_dir=runs_dir))
    assert ae is not None
    source = torch.load(runs_dir / "ae" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    encoder_before = {k: v for k, v in source.items() if k.startswith("encoder.")}

    config = tmp_path / "frozen.yaml"
    config.write_text(
        (CONFIGS / "digits_frozen_encoder.yaml")
        .read_text()
        .replace("runs/REPLACE-WITH-THE-AE-RUN", str(runs_dir / "ae"))
    )
    cli = main(
        cli_args("fit", "--config", str(config), "--config", LIMIT, "--run_name", "frozen", runs_dir=runs_dir)
    )
    assert cli is not None and isinstance(cli.model, LatentClassifier)
    after = torch.load(runs_dir / "frozen" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # The encoder, BatchNorm statistics included, is bit-identical after training; the head learned.
    assert encoder_before.keys() == {k for k in after if k.startswith("encoder.")}
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())
    assert not all(torch.equal(after[k], source[k]) for k in after if k.startswith("classifier."))
    # Frozen parameters are left out of the optimizer.
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in cli.model.classifier.parameters()}
    # 20 steps on an encoder that itself trained 20 steps: well above chance (0.1), far from good.
    assert json.loads((cli.run_dir / "metrics.json").read_text())["val/acc"] > 0.2


def test_checkpoint_choice_names_what_is_available(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("last.ckpt", "best-epoch004.ckpt"):
        (folder / name).write_bytes(b"")
    assert checkpoint_file(tmp_path / "run", "last").name == "last.ckpt"
    assert checkpoint_file(tmp_path / "run", "best").name == "best-epoch004.ckpt"
    assert checkpoint_file(tmp_path / "run", 4).name == "best-epoch004.ckpt"
    with pytest.raises(
        UserError, match=r"checkpoint 7 of .*: none found among \['best-epoch004.ckpt', 'last.ckpt'\]"
    ):
        checkpoint_file(tmp_path / "run", 7)
    with pytest.raises(UserError, match="has no checkpoints/ folder"):
        checkpoint_file(tmp_path / "elsewhere", "last")
