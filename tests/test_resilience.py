"""Runs survive: a killed run resumes to exactly where an unbroken one ends, checkpoints are never
half-written, and every bad input gets one clear message with nothing already written lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from project.callbacks import RNGState
from project.checkpoint_io import AtomicCheckpointIO
from project.cli import main
from project.model import ConvNet
from project.structs import Example, Loss, Prediction
from tests.conftest import (
    CONFIGS,
    DIGITS_NO_VISUALS,
    REPO,
    cli_args,
    kill_when,
    own_wandb_service,
    read_offline_run,
    unused_port,
)

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
LIMIT = str(CONFIGS / "debug" / "limit.yaml")


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(checkpoint, weights_only=True)["state_dict"]
    return state


# ---- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("python_state_as", ["tensor", "list"], ids=["now", "older checkpoints"])
def test_rng_state_round_trips_every_generator(tmp_path: Path, python_state_as: str) -> None:
    callback = RNGState()
    state = callback.state_dict()
    if python_state_as == "list":  # as checkpoints written before the state became one tensor hold it
        state["python"]["state"] = state["python"]["state"].tolist()
    torch.save(state, tmp_path / "rng.pt")  # through a file, read back by the safe loader as a checkpoint is
    expected = (torch.rand(3), np.random.rand(3), random.random())
    callback.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert (
        torch.equal(expected[0], again[0])
        and np.array_equal(expected[1], again[1])
        and expected[2] == again[2]
    )


@pytest.mark.slow
@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_killed_run_resumes_to_the_same_weights_as_an_unbroken_run(runs_dir: Path, ema: bool) -> None:
    """SIGKILL after an epoch boundary, resume with --ckpt_path last: the final weights are
    bit-identical (torch.equal) to an uninterrupted run's. On CPU with the random generators saved in
    the checkpoint (RNGState) and deterministic ops, every step repeats exactly, so no tolerance is
    needed; a tolerance would hide a lost or repeated batch. With configs/ema.yaml the averaged weights
    (the checkpoint's state_dict) and the current ones both come out bit-identical."""
    common = ["--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "5",
              "--trainer.deterministic", "true", "--trainer.default_root_dir", str(runs_dir)]  # fmt: skip
    if ema:
        common += ["--trainer.callbacks+", str(CONFIGS / "ema.yaml")]
    unbroken = main(["fit", *common, "--run_name", "unbroken"])
    assert unbroken is not None

    process = subprocess.Popen(
        [sys.executable, "-m", "project", "fit", *common, "--run_name", "killed"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=own_wandb_service(),
    )  # fmt: skip
    last = runs_dir / "killed" / "checkpoints" / "last.ckpt"
    # AtomicCheckpointIO renames complete files into place: whatever is there can be read.
    kill_when(process, lambda: last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 1)
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= killed_at < 4

    resumed = main(["fit", *common, "--run_name", "killed", "--ckpt_path", "last"])
    assert resumed is not None and resumed.trainer.current_epoch == 5
    a, b = weights(runs_dir / "unbroken/checkpoints/last.ckpt"), weights(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if ema:  # the weights above are the averages; the trained ones and the average's count match too
        ca, cb = (
            torch.load(p, weights_only=True) for p in (runs_dir / "unbroken/checkpoints/last.ckpt", last)
        )
        for key in ("current_model_state", "averaging_state"):
            assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca[key]), key
        assert not all(torch.equal(a[k], ca["current_model_state"][k]) for k in a)  # an average, not a copy
    metrics = [json.loads((runs_dir / name / "metrics.json").read_text()) for name in ("unbroken", "killed")]
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "best_score"):
        assert metrics[1][key] == metrics[0][key], key
    # The W&B run was continued, not duplicated: both parts carry one run id.
    parts = sorted((runs_dir / "killed" / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and len({p.name.rsplit("-", 1)[-1] for p in parts}) == 1


@pytest.mark.slow
def test_resume_auto_starts_a_run_then_continues_it(runs_dir: Path) -> None:
    args = ["--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "3", "--run_name", "job42",
            "--resume", "auto"]  # fmt: skip
    first = main(
        cli_args("fit", *args, "--trainer.callbacks+=tests.test_cli.StopAfterEpochs", runs_dir=runs_dir)
    )
    assert first is not None and first.trainer.current_epoch == 2  # "preempted" after 2 of 3 epochs
    again = main(cli_args("fit", *args, runs_dir=runs_dir))  # the very same command
    assert again is not None and again.run_dir == first.run_dir
    assert again.trainer.current_epoch == 3 and again.trainer.global_step == 30
    # Both parts log into one W&B run: two offline folders, one run id, read back by W&B's own tool.
    parts = sorted((again.run_dir / "wandb").glob("offline-run-*"))
    ids = {str(read_offline_run(part)["run_id"]) for part in parts}
    assert len(parts) == 2 and len(ids) == 1


# ---- checkpoints: atomic writes, bad files -------------------------------------------------------

SAVE_LOOP = """
import sys, torch
from project.checkpoint_io import AtomicCheckpointIO
io = AtomicCheckpointIO()
for i in range(10_000):
    io.save_checkpoint({"step": i, "payload": torch.full((16_000_000,), float(i))}, sys.argv[1])
"""


@pytest.mark.slow
def test_a_kill_during_a_save_never_leaves_a_broken_checkpoint(tmp_path: Path) -> None:
    """Kill a process that rewrites a 64 MB checkpoint in a loop twice: right after its first save,
    and while a save is being written (its temp file is there): the file on disk is always a complete
    checkpoint, and the next save clears the temp file a killed save left behind."""
    target = tmp_path / "last.ckpt"
    interrupted = 0
    for mid_write in (False, True):  # each a process importing Lightning: two kills
        target.unlink(missing_ok=True)
        process = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target)], cwd=REPO)
        deadline = time.monotonic() + 120
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        while mid_write and not list(tmp_path.glob(".last.ckpt.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        checkpoint = torch.load(target, weights_only=True)
        assert torch.equal(checkpoint["payload"][:3], torch.full((3,), float(checkpoint["step"])))
        interrupted += len(list(tmp_path.glob(".last.ckpt.*.tmp")))
    assert interrupted > 0, "no kill landed during a write: the test proved nothing"
    AtomicCheckpointIO().save_checkpoint({"step": -1}, target)
    assert not list(tmp_path.glob(".last.ckpt.*.tmp")) and torch.load(target, weights_only=True)["step"] == -1


def short_run(runs_dir: Path, name: str = "base") -> Path:
    """Fit the digits demo briefly (limit preset) and return its last.ckpt."""
    fit = main(cli_args("fit", "--config", DIGITS, "--config", LIMIT, "--run_name", name, runs_dir=runs_dir))
    assert fit is not None
    return runs_dir / name / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_truncated_checkpoint_is_named(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = short_run(runs_dir)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("validate", "--config", DIGITS, "--ckpt_path", str(truncated), runs_dir=runs_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"checkpoint {truncated} is truncated or not a checkpoint" in err and "Traceback" not in err


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = str(short_run(runs_dir))
    with pytest.raises(SystemExit):
        main(cli_args("validate", "--config", DIGITS, "--model", "project.model.CifarResNet",
                      "--ckpt_path", checkpoint, runs_dir=runs_dir))  # fmt: skip
    err = capsys.readouterr().err
    assert "holds a project.model.ConvNet, but the config builds a project.model.CifarResNet" in err


@pytest.mark.slow
def test_checkpoints_load_weights_only_unless_told_otherwise(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = torch.load(short_run(runs_dir), weights_only=True)
    checkpoint["extra"] = Path("an/object/the/safe/loader/refuses")  # any non-tensor class instance
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(checkpoint, unsafe)
    with pytest.raises(SystemExit):
        main(cli_args("validate", "--config", DIGITS, "--ckpt_path", str(unsafe), runs_dir=runs_dir))
    err = capsys.readouterr().err
    assert "the safe loader refuses" in err and "--weights_only false" in err
    trusted_args = ["validate", "--config", DIGITS, "--ckpt_path", str(unsafe), "--weights_only", "false"]
    trusted = main(cli_args(*trusted_args, runs_dir=runs_dir))
    assert trusted is not None and "val/acc" in json.loads((trusted.run_dir / "metrics.json").read_text())


# ---- bad values during training -------------------------------------------------------------------


class NaNAtStep(ConvNet):
    """ConvNet whose loss turns NaN at global step 13 (epoch 1, batch 3 with 10 batches an epoch)."""

    def compute_loss(self, example: Example, prediction: Prediction) -> Loss:
        loss = super().compute_loss(example, prediction)
        if self.training and self.trainer.global_step == 13:
            return Loss({"ce": loss.terms["ce"] * float("nan")})
        return loss


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", DIGITS, "--config", LIMIT, "--model", "tests.test_resilience.NaNAtStep",
            "--run_name", "nan", "--trainer.max_epochs", "3"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", *args, runs_dir=runs_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the training loss is nan at epoch 1, global step 13, batch 3 (dataset indices [" in err
    last = runs_dir / "nan" / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in err and "--trainer.detect_anomaly true" in err
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 10  # written before the bad step
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--trainer.max_epoch", "3"], "max_epoch is not an option of `fit`; did you mean trainer.max_"),
        (["--model.init_args.dropoutt", "3"],
         "dropoutt is not an argument of project.model.ConvNet; did you mean dropout?"),
        (["--data.init_args.batch_sise", "3"], "did you mean batch_size or eval_batch_size?"),
        (["--data.init_args.batch_size", "abc"], "data.init_args.batch_size: expected int, got 'abc'"),
        (["--model.init_args.dropout", "fast"], "model.init_args.dropout: expected float, got 'fast'"),
        (["--data.init_args.batch_size", "-2"], "batch_size must be at least 1, got -2"),
        (["--model.init_args.optimizer.lr", "-0.1"], "optimizer: Invalid learning rate: -0.1"),
        (["--trainer.max_epochs", "-3"], "`max_epochs` must be a non-negative integer"),
        (["--model.init_args.optimizer", "torch.optim.Adamm"],
         "optimizer class torch.optim.Adamm not found; did you mean torch.optim.Adam"),
    ],
)  # fmt: skip
def test_bad_options_get_one_clear_message(
    runs_dir: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", DIGITS, *arguments, runs_dir=runs_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert message in line, err
    assert "Traceback" not in err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing left behind


def test_a_typo_in_a_config_file_names_the_key(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_epoch: 3\n")
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--config", str(typo), runs_dir=runs_dir))
    assert (
        "error: trainer.max_epoch is not an option of `fit`; did you mean trainer.max_epochs"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model.class_path", "project.model.ConvNett"],
         "model class project.model.ConvNett not found; did you mean project.model.ConvNet?"),
        (["--model", "ConvNett"], "model class ConvNett not found; did you mean ConvNet?"),
        (["--model", "project.modl.ConvNet"], "did you mean project.model.ConvNet?"),
        (["--model", "projct.model.ConvNet"],
         "model class projct.model.ConvNet not found: there is no module projct"),
        (["--model", "project.data.DigitsDataModule"],
         "model: project.data.DigitsDataModule is not a subclass of BaseModel"),
        (["--data", "project.data.DigitsDataModul"],
         "data class project.data.DigitsDataModul not found; did you mean project.data.DigitsDataModule"),
        (["--trainer.callbacks+=project.callbacks.TopKExampels"],
         "trainer.callbacks class project.callbacks.TopKExampels not found; "
         "did you mean project.callbacks.TopKExamples?"),
        (["--model.init_args.optimizer", "torch.optim.RAdamm"],
         "model.init_args.optimizer class torch.optim.RAdamm not found; did you mean torch.optim.RAdam"),
        (["--model.init_args.scheduler", "torch.optim.lr_scheduler.OneCycleLRR"],
         "model.init_args.scheduler class torch.optim.lr_scheduler.OneCycleLRR not found; did you mean "
         "torch.optim.lr_scheduler.OneCycleLR"),
        (["--model.init_args.optimizer", "adam"],
         "model.init_args.optimizer class adam not found; did you mean Adam"),
        (["--model.init_args.scheduler", "onecycle"],
         "model.init_args.scheduler class onecycle not found; did you mean OneCycleLR"),
        (["--model.init_args.optimizer.init_args.lrr", "3"],
         "model.init_args.optimizer.init_args.lrr is not an argument of torch.optim.AdamW; did you mean lr?"),
        (["--model.init_args.optimizer.init_args.lr", "fast"],
         "model.init_args.optimizer.init_args.lr: expected float or torch.Tensor, got 'fast'"),
        (["--trainer.precision", "bogus"],
         "trainer.precision: expected one of 64, 32, 16, 'transformer-engine'"),
        (["--seed_everything", "abc"], "seed_everything: expected bool or int, got 'abc'"),
        (["--trainer.strategy", "foo"], "invalid strategy name: `strategy='foo'`"),
        (["--trainer.num_nodes", "0"], "`num_nodes` must be a positive integer, but got 0"),
        (["--ckpt_path", "best"], "--ckpt_path best looks for a checkpoint in the run's own directory"),
        (["--ckpt_path", "{tmp}"], "checkpoint {tmp} is a folder: pass a checkpoint file"),
        (["--run_name", "a/b"], "--run_name 'a/b' is not a folder name: give one without '/'"),
        (["--run_name", ".."], "--run_name '..' is not a folder name"),
    ],
)  # fmt: skip
def test_more_bad_input_gets_one_clear_message(
    runs_dir: Path, tmp_path: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", DIGITS, *arguments, runs_dir=runs_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert message.replace("{tmp}", str(tmp_path)) in line, err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing left behind


def test_a_mistyped_class_in_a_config_file_is_named(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  class_path: project.model.ConvNett\n  init_args:\n    channels: [8]\n")
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--config", str(typo), runs_dir=runs_dir))
    err = capsys.readouterr().err
    assert "error: model class project.model.ConvNett not found; did you mean project.model.ConvNet?\n" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "trainer:\n  max_epochs: [1, 2\n",
            "is not valid YAML: did not find expected ',' or ']' (line 3)",
        ),
        ("fit quickly\n", "holds no options: it must be a YAML mapping, e.g. `trainer: {max_epochs: 5}`"),
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_named(
    runs_dir: Path, tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(content)
    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--config", str(config), runs_dir=runs_dir))
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert line == f"error: config file {config} {message}"


def test_a_runs_folder_that_cannot_be_created_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("precious")
    for root, reason in ((afile, "it is a file"), (afile / "runs", "not a directory")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(root)])
        assert exit_info.value.code == 2
        expected = f"error: cannot create run directories under {root}: {reason}; pass a writable folder as"
        assert expected in capsys.readouterr().err
    assert afile.read_text() == "precious"


@pytest.mark.slow
def test_wandb_online_without_network_falls_back_to_offline(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{unused_port()}")
    start = time.monotonic()
    cli = main(
        cli_args(
            "fit", "--config", DIGITS, "--config", str(CONFIGS / "debug" / "limit.yaml"), runs_dir=runs_dir
        )
    )
    assert time.monotonic() - start < 60  # a limit run takes ~10 s; W&B's own retries would take minutes
    assert cli is not None and list((cli.run_dir / "wandb").glob("offline-run-*"))
    assert "warning: WANDB_MODE=online but" in capsys.readouterr().err
    assert os.environ["WANDB_MODE"] == "offline"
