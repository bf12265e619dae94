"""`python -m project export` (issue #14): the exported files compute what the PyTorch model computes.

From a real checkpoint of a short digits fit, the ONNX file runs in ONNX Runtime and the torch.export
program after `torch.export.load`, on a real batch of test digits of another size than the one
traced (so the batch dimension is dynamic), and their logits match PyTorch's within PARITY_ATOL.
Bad inputs end in one `error:` line with nothing written.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from project.cli import main as cli_main
from project.data import DigitsDataModule
from project.export import TRACE_BATCH, main
from project.model import ConvNet
from project.structs import Example, Prediction
from tests.conftest import REPO, cli_args

# Largest |exported - PyTorch| logit allowed, float32 on the CPU. torch.export runs PyTorch's own kernels
# (measured: 0); ONNX Runtime's differ only in the order of float32 sums. Measured: 2e-7 on this
# file's one-epoch checkpoint (logits up to 0.4), 7.6e-6 on the 30-epoch digits demo (logits up to 17.5).
PARITY_ATOL = 1e-4
BATCH = 7  # a real digits batch; not TRACE_BATCH, so a fixed batch dimension would fail
assert BATCH != TRACE_BATCH


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of a real, short fit on digits (one epoch of two batches). The model and data
    of configs/digits.yaml without its plots, which would only cost time here."""
    runs = tmp_path_factory.mktemp("export") / "runs"
    data = ["--model", "project.model.ConvNet", "--data", "project.data.DigitsDataModule"]
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    args = ["fit", *data, "--data.init_args.device_loader=true", *short, "--test_after_fit=false"]
    cli = cli_main(cli_args(*args, "--run_name", "base", runs_dir=runs))
    assert cli is not None
    (best,) = (cli.run_dir / "checkpoints").glob("best-*.ckpt")
    return best


@pytest.fixture(scope="module")
def digits() -> Tensor:
    """A batch of real test digits, normalized as the DataModule yields them."""
    data = DigitsDataModule(batch_size=BATCH)
    data.setup("test")
    batch: Example = next(iter(data.test_dataloader()))
    assert batch.image.shape == (BATCH, 1, 8, 8)
    return batch.image


def pytorch_logits(ckpt: Path, images: Tensor) -> Tensor:
    model = ConvNet.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        return model(Example(image=images)).logits


def error_line(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the command, which must exit 2 with one line on stderr, and return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.slow
def test_onnx_file_matches_pytorch_in_onnx_runtime(
    ckpt: Path, digits: Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    main(["--ckpt_path", str(ckpt), "--format", "onnx"])
    onnx_file = ckpt.with_suffix(".onnx")  # beside the checkpoint by default
    assert f"wrote {onnx_file}" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    for images in (digits, digits[:1]):  # 1: torch.export must not have specialized the batch to it
        (logits,) = session.run(["logits"], {"image": images.numpy()})
        difference = (torch.from_numpy(logits) - pytorch_logits(ckpt, images)).abs().max().item()
        assert difference <= PARITY_ATOL

    spec = json.loads(Path(f"{onnx_file}.json").read_text())
    assert spec["format"] == "onnx" and spec["file"] == onnx_file.name
    assert spec["input"] == {"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    assert spec["output"] == {"name": "logits", "shape": ["batch", 10], "dtype": "float32"}
    assert spec["class_names"] == [str(d) for d in range(10)]
    assert spec["normalization"]["mean"] == list(DigitsDataModule.mean)
    assert spec["normalization"]["std"] == list(DigitsDataModule.std)
    assert spec["model_class"] == "project.model.ConvNet"
    assert spec["checkpoint"]["path"] == str(ckpt)
    assert spec["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    # The session's own view of the file agrees with the spec.
    assert session.get_inputs()[0].shape == spec["input"]["shape"]
    assert session.get_outputs()[0].shape == spec["output"]["shape"]


@pytest.mark.slow
def test_exported_program_from_the_command_line_matches_pytorch(ckpt: Path, digits: Tensor) -> None:
    output = ckpt.parent / "program.pt2"
    command = [sys.executable, "-m", "project", "export", "--ckpt_path", str(ckpt), "--format", "exported"]
    done = subprocess.run([*command, "--output", str(output)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {output} and {output}.json"
    program = torch.export.load(output).module()
    with torch.no_grad():
        difference = (program(digits) - pytorch_logits(ckpt, digits)).abs().max().item()
    assert difference <= PARITY_ATOL
    spec = json.loads(Path(f"{output}.json").read_text())
    assert spec["format"] == "exported" and spec["input"]["shape"] == ["batch", 1, 8, 8]


def test_torchscript_is_refused_naming_its_successors(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, "--ckpt_path", "any.ckpt", "--format", "torchscript")
    assert "deprecated" in line and "--format exported" in line and "--format onnx" in line


def test_an_existing_export_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "model.onnx"
    existing.write_text("earlier export")
    line = error_line(
        capsys, "--ckpt_path", str(tmp_path / "x.ckpt"), "--format", "onnx", "--output", str(existing)
    )
    assert f"{existing} exists" in line and "--overwrite" in line
    assert existing.read_text() == "earlier export"


class Untraceable(ConvNet):
    """Branches in Python on a value the input holds: torch.export cannot trace it."""

    def forward(self, example: Example) -> Prediction:
        prediction = super().forward(example)
        if example.image.sum() > 0:
            return prediction
        return Prediction(logits=-prediction.logits)


def saved(path: Path, model: pl.LightningModule, class_path: str) -> Path:
    """A checkpoint of `model` (as LightningCLI writes one, naming its class) with no training."""
    hyper_parameters = {**model.hparams, "_class_path": class_path}
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict(), "hyper_parameters": hyper_parameters}
    torch.save({**checkpoint, "pytorch-lightning_version": pl.__version__}, path)
    return path


def test_a_model_torch_export_cannot_trace_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = Untraceable(num_classes=10, in_shape=(1, 8, 8))
    ckpt = saved(tmp_path / "untraceable.ckpt", model, f"{__name__}.Untraceable")
    # A class outside the package: the safe check refuses it (as it should); this file is trusted.
    line = error_line(capsys, "--ckpt_path", str(ckpt), "--format", "exported", "--weights_only", "false")
    assert "torch.export cannot trace Untraceable.forward" in line
    assert "data-dependent" in line and "if example.image.sum() > 0" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["untraceable.ckpt"]


def test_a_model_class_no_longer_importable_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = saved(tmp_path / "old.ckpt", ConvNet(num_classes=10, in_shape=(1, 8, 8)), "project.model.Gone")
    line = error_line(capsys, "--ckpt_path", str(ckpt), "--format", "onnx")
    assert "project.model.Gone" in line and "cannot be imported" in line and "restore it" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.ckpt"]
