"""`python -m project` end to end: run directories, outputs, resume, predict, and clear failures."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from project.cli import DEFAULT_ARGS, main
from project.data import DigitsDataModule
from project.model import ConvNet
from project.wandb_setup import WANDB_INIT_IMPORTS, import_wandb_early
from tests.conftest import (
    CONFIGS,
    DIGITS_NO_VISUALS,
    REPO,
    cli_args,
    only_run_dir,
    read_wandb_summary,
    unused_port,
)

DIGITS = str(CONFIGS / "digits.yaml")
PLAIN = str(DIGITS_NO_VISUALS)  # without the pictures, for the tests that look at none
LIMIT = str(CONFIGS / "debug" / "limit.yaml")  # 10 train batches x 2 epochs: a few seconds


def run_module(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "project", *args],
        cwd=cwd,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_arguments_means_the_cifar10_demo() -> None:
    assert ["fit", "--config", str(CONFIGS / "cifar10.yaml")] == DEFAULT_ARGS


def test_print_config_composes_defaults_configs_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                DIGITS,
                "--config",
                LIMIT,
                "--model.init_args.optimizer.lr",
                "0.02",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"] == "project.model.ConvNet"  # from digits.yaml
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.02  # from the command line
    assert config["trainer"]["max_epochs"] == 2  # limit.yaml overrides digits.yaml
    assert config["seed_everything"] == 42  # from defaults.yaml
    loggers = [logger["class_path"] for logger in config["trainer"]["logger"]]
    assert loggers == ["pytorch_lightning.loggers.WandbLogger", "pytorch_lightning.loggers.CSVLogger"]


@pytest.mark.parametrize(
    "argument", ["--model.init_args.num_classes=5", "--model.init_args.in_shape=[3,8,8]"]
)
def test_model_sizes_come_only_from_the_data(
    runs_dir: Path, argument: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", DIGITS, argument, runs_dir=runs_dir))
    assert exit_info.value.code == 2
    assert "disagrees with data." in capsys.readouterr().err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing left behind


@pytest.mark.slow
def test_fit_on_digits_end_to_end(tmp_path: Path) -> None:
    """The offline demo as a user runs it (in 10 of its 30 epochs: the schedule is scaled to the run's
    length, and 10 are enough for its accuracy): trains, tests, and leaves a complete run directory."""
    runs_dir = tmp_path / "runs"
    result = run_module(
        "fit", "--config", DIGITS, "--trainer.max_epochs", "10", "--trainer.default_root_dir", str(runs_dir)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(runs_dir)
    assert f"Run directory: {run_dir}" in result.stdout

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/acc"] >= 0.95
    assert metrics["test/acc"] >= 0.9  # fit is followed by test on the best checkpoint
    assert metrics["epoch"] == 10

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-epoch") for name in checkpoints)
    assert Path(metrics["best_checkpoint"]).is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["class_path"] == "project.model.ConvNet"
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == split["num_samples"] == 1438
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        assert "val/acc" in next(csv.reader(f))

    summary = read_wandb_summary(run_dir)
    assert summary["state"] == "finished" and summary["project"] == "project"
    assert summary["name"] == run_dir.name
    logged = summary["summary"]
    assert isinstance(logged, dict)
    assert logged["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert {"train/loss", "train/acc", "val/f1", "test/acc"} <= set(logged)
    # metadata.json: the command as typed (tests/test_run_metadata.py checks the rest), in W&B too.
    (entry,) = json.loads((run_dir / "metadata.json").read_text())["segments"]
    typed = ["-m", "project", "fit", "--config", DIGITS, "--trainer.max_epochs", "10"]
    assert entry["command"].startswith(shlex.join([Path(sys.executable).name, *typed]))
    wandb_config = summary["config"]
    assert isinstance(wandb_config, dict) and wandb_config["run_metadata"]["command"] == entry["command"]


class StopAfterEpochs(pl.Callback):
    """Ends training early, as an interrupted run would, after `epochs` complete epochs."""

    def __init__(self, epochs: int = 2) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.slow
def test_resume_with_ckpt_path_last_continues_in_the_same_run(runs_dir: Path) -> None:
    three_epochs = ["--config", PLAIN, "--config", LIMIT, "--run_name", "r1", "--trainer.max_epochs", "3"]
    first = main(
        cli_args(
            "fit", *three_epochs, "--trainer.callbacks+=tests.test_cli.StopAfterEpochs", runs_dir=runs_dir
        )
    )
    assert first is not None and first.trainer.current_epoch == 2  # stopped after 2 of 3 epochs
    run_dir = runs_dir / "r1"
    original_config = (run_dir / "config.yaml").read_text()
    first_csv = (run_dir / "csv" / "version_0" / "metrics.csv").read_text()

    resumed = main(cli_args("fit", *three_epochs, "--ckpt_path", "last", runs_dir=runs_dir))
    assert resumed is not None and resumed.run_dir == run_dir
    assert resumed.trainer.current_epoch == 3
    assert resumed.trainer.global_step == 3 * 10  # 10 batches per epoch: only the missing epoch ran
    # Nothing the first part wrote was replaced: its config, its CSV log.
    assert (run_dir / "config.yaml").read_text() == original_config
    assert (run_dir / "config.fit.2.yaml").is_file()
    assert (run_dir / "csv" / "version_0" / "metrics.csv").read_text() == first_csv
    with open(run_dir / "csv" / "version_1" / "metrics.csv") as f:
        trained_epochs = {row["epoch"] for row in csv.DictReader(f) if row["train/loss"]}
    assert trained_epochs == {"2"}
    assert json.loads((run_dir / "metrics.json").read_text())["epoch"] == 3


@pytest.mark.slow
def test_resume_with_another_run_length_is_refused(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(cli_args("fit", "--config", PLAIN, "--config", LIMIT, "--run_name", "r2", runs_dir=runs_dir))
    last = runs_dir / "r2" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(
            cli_args(
                "fit", "--config", PLAIN, "--config", LIMIT, "--run_name", "r2", "--ckpt_path", "last",
                "--trainer.max_epochs", "4", runs_dir=runs_dir,
            )
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "schedule spans 20 steps but this run has 40" in capsys.readouterr().err
    assert last.read_bytes() == before  # the checkpoint is untouched


def test_run_directories_are_never_reused_by_accident(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (runs_dir / "taken").mkdir(parents=True)
    (runs_dir / "taken" / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", DIGITS, "--run_name", "taken", runs_dir=runs_dir))
    assert exit_info.value.code == 2
    assert "already exists and is left untouched" in capsys.readouterr().err
    assert [p.name for p in (runs_dir / "taken").iterdir()] == ["keep.txt"]

    with pytest.raises(SystemExit):
        main(cli_args("fit", "--config", DIGITS, "--ckpt_path", "last", runs_dir=runs_dir))
    assert "add --run_name NAME" in capsys.readouterr().err


@pytest.mark.slow
def test_validate_test_and_predict_from_a_checkpoint(runs_dir: Path) -> None:
    fit = main(cli_args("fit", "--config", PLAIN, "--config", LIMIT, "--run_name", "base", runs_dir=runs_dir))
    assert fit is not None
    checkpoint = str(runs_dir / "base" / "checkpoints" / "last.ckpt")

    for stage in ("validate", "test"):
        cli = main(cli_args(stage, "--config", PLAIN, "--ckpt_path", checkpoint, runs_dir=runs_dir))
        assert cli is not None and cli.run_dir.name.endswith(f"convnet-{stage}")
        metrics = json.loads((cli.run_dir / "metrics.json").read_text())
        prefix = "val" if stage == "validate" else "test"
        assert metrics[f"{prefix}/acc"] > 0.5

    predict = main(cli_args("predict", "--config", PLAIN, "--ckpt_path", checkpoint, runs_dir=runs_dir))
    assert predict is not None
    with open(predict.run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 359  # every test image, once
    assert {row["class"] for row in rows} <= {str(d) for d in range(10)}
    assert all(0.1 <= float(row["confidence"]) <= 1.0 for row in rows)
    # `index` finds each image's true label again: the briefly trained model gets most right.
    labels = DigitsDataModule().load_test()[1]
    correct = sum(int(row["pred"]) == int(labels[int(row["index"])]) for row in rows)
    assert correct / len(rows) > 0.7


@pytest.mark.slow  # a fresh interpreter
def test_help_imports_nothing_heavy_beyond_lightning() -> None:
    """`python -m project --help` costs `import pytorch_lightning` and little more (benchmarks/startup.py
    times it): none of the packages a run needs later (W&B, Optuna, scikit-learn, TensorBoard, ONNX) is
    imported, nor any matplotlib or torchvision part that Lightning itself leaves out."""
    script = (
        "import sys\nimport pytorch_lightning\nbefore = set(sys.modules)\n"
        "sys.argv = ['project', '--help']\nfrom project.__main__ import dispatch\n"
        "try:\n    dispatch()\nexcept SystemExit:\n    pass\n"
        "heavy = ('wandb', 'optuna', 'sklearn', 'tensorboard', 'tensorboardX', 'onnx', 'onnxruntime',"
        " 'matplotlib', 'scipy', 'pandas')\n"
        "models = ('torchvision.models', 'torchvision.datasets')  # its transforms.v2: 0.02 s, needed\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(m for m in new if m.split('.')[0] in heavy or m.startswith(models)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "usage:" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr[-2000:]


@pytest.mark.parametrize(
    ("argv", "env", "imports"),
    [
        ([], {}, True),  # the default demo: a fit
        (["fit", "--config", "configs/digits.yaml"], {}, True),
        (["test", "--ckpt_path", "best"], {"RANK": "0"}, True),
        (["fit", "--help"], {}, False),
        (["fit", "--print_config"], {}, False),
        (["runs"], {}, False),
        (["export", "runs/x"], {}, False),
        (["fit"], {"WANDB_MODE": "disabled"}, False),
        (["fit"], {"LOCAL_RANK": "1"}, False),  # a DDP rank that logs nothing
        (["fit"], {"SLURM_PROCID": "3"}, False),
    ],
)
def test_wandb_is_imported_early_only_for_a_command_that_starts_a_run(
    argv: list[str], env: dict[str, str], imports: bool
) -> None:
    assert import_wandb_early(argv, env) is imports
    if imports:
        assert WANDB_INIT_IMPORTS in sys.modules


def test_without_wandb_installed_the_early_import_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("project.wandb_setup.WANDB_INIT_IMPORTS", "wandb_is_not_installed.sdk")
    assert import_wandb_early(["fit"], {}) is False


@pytest.mark.slow  # two fresh interpreters
def test_a_fit_imports_wandbs_launch_package_before_torch_and_help_none_of_it(tmp_path: Path) -> None:
    """`python -X importtime` prints each module as its import ends: in a fit W&B's launch package,
    which wandb.init imports, comes before torch (then it takes ~0.1 s, not ~0.5-1 s:
    wandb_setup.import_wandb_early); `fit --help` starts no W&B run and imports none of it."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}

    def imports(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "project", *args], cwd=REPO,
                              env=os.environ | env, capture_output=True, text=True, timeout=300)  # fmt: skip
        lines = done.stderr.splitlines()
        return done, [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]

    fit, ended = imports("fit", "--config", PLAIN, "--trainer.fast_dev_run", "true",
                         "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    # (The module importlib.import_module was asked for has no line of its own; its imports do.)
    launch_package = WANDB_INIT_IMPORTS.rsplit(".", 2)[0]  # wandb.sdk.launch
    launch = [n for n, name in enumerate(ended) if name.startswith(launch_package)]
    assert launch and max(launch) < ended.index("torch")
    help_, ended = imports("fit", "--help")
    assert help_.returncode == 0 and "usage:" in help_.stdout
    assert "torch" in ended and not [name for name in ended if name.startswith(launch_package)]


@pytest.mark.slow
def test_default_demo_without_network_fails_fast_and_clearly(tmp_path: Path) -> None:
    """`python -m project` with no data and no network: one message, no traceback, status 2."""
    # https_proxy points urllib at a closed local port: the download fails as it would offline,
    # and a machine that does have network cannot start a 163 MB download from this test.
    start = time.monotonic()
    result = run_module(cwd=tmp_path, env={"https_proxy": f"http://127.0.0.1:{unused_port()}"})
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    assert elapsed < 30
    message = result.stderr
    assert "Traceback" not in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message  # the URL tried
    assert "data/cifar-10-batches-py" in message  # the target directory
    assert "put it at data/cifar-10-python.tar.gz" in message  # how to place it by hand
    assert "configs/digits.yaml" in message  # the offline command
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_default_cifar10_demo_trains_from_files_on_disk(tmp_path: Path, runs_dir: Path) -> None:
    """configs/cifar10.yaml as shipped (ResNet-18, augmentation, SGD + one-cycle) on a tiny CIFAR-10
    in the real on-disk format: everything but the download, which tests/test_cifar10.py covers."""
    from project.data.fake_cifar10 import write_cifar10

    files = write_cifar10(tmp_path / "data", per_batch=4, test_size=4)
    cli = main(
        cli_args(
            "fit", "--config", str(CONFIGS / "cifar10.yaml"),
            "--data.init_args.data_dir", str(files.root), "--data.init_args.download", "false",
            "--data.init_args.batch_md5", json.dumps(files.batch_md5),
            "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
            "--trainer.max_epochs", "1", runs_dir=runs_dir,
        )
    )  # fmt: skip
    assert cli is not None
    assert type(cli.model).__name__ == "CifarResNet" and cli.model.hparams["in_shape"] == (3, 32, 32)
    metrics = json.loads((cli.run_dir / "metrics.json").read_text())
    assert {"val/acc", "test/acc", "best_checkpoint"} <= set(metrics)
    split = json.loads((cli.run_dir / "split.json").read_text())
    assert split["num_samples"] == 20 and len(split["val"]) == 2  # val_fraction 0.1 of 5 x 4


@pytest.mark.slow
def test_saved_config_repeats_the_run_in_a_new_directory(runs_dir: Path) -> None:
    first = main(
        cli_args("fit", "--config", PLAIN, "--config", LIMIT, "--run_name", "orig", runs_dir=runs_dir)
    )
    assert first is not None
    saved = first.run_dir / "config.yaml"
    files_before = sorted(p.relative_to(first.run_dir) for p in first.run_dir.rglob("*"))
    again = main(cli_args("fit", "--config", str(saved), runs_dir=runs_dir))
    assert again is not None and again.run_dir != first.run_dir and again.run_dir.parent == runs_dir
    assert sorted(p.relative_to(first.run_dir) for p in first.run_dir.rglob("*")) == files_before
    # Same config, same seed, same split: the repeat reproduces the original's validation accuracy.
    metrics = [json.loads((cli.run_dir / "metrics.json").read_text()) for cli in (first, again)]
    assert metrics[0]["val/acc"] == pytest.approx(metrics[1]["val/acc"])
    assert (again.run_dir / "split.json").read_text() == (first.run_dir / "split.json").read_text()


@pytest.mark.slow
def test_a_fit_gets_no_wandb_warning_about_the_anonymous_setting(tmp_path: Path) -> None:
    """Lightning's WandbLogger passes `anonymous` to wandb.init even when unset, and W&B warns on every
    run that the setting has no effect: the CLI leaves it out."""
    result = run_module(
        "fit", "--config", PLAIN, "--config", LIMIT, "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",  # W&B speaks at init
        "--test_after_fit", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
        env={"WANDB_SILENT": "false"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb: Tracking run" in result.stderr  # W&B's own output is shown, so its warning would be too
    assert "anonymous" not in result.stderr


@pytest.mark.slow
def test_early_stopping_ends_the_fit_and_the_best_checkpoint_is_tested(
    runs_dir: Path, tmp_path: Path
) -> None:
    """configs/early_stopping.yaml's callback (made impatient here) stops a digits fit early: last.ckpt
    holds the stopping epoch, the test after fit reads the best checkpoint, the last epoch is drawn."""
    (entry,) = yaml.safe_load((CONFIGS / "early_stopping.yaml").read_text())
    entry["init_args"] |= {"patience": 1, "min_delta": 1.0}  # no epoch can improve by a whole 1.0
    impatient = tmp_path / "early_stopping.yaml"
    impatient.write_text(yaml.safe_dump([entry]))
    args = ["fit", "--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "6"]
    cli = main(cli_args(*args, f"--trainer.callbacks+={impatient}", runs_dir=runs_dir))
    assert cli is not None and cli.trainer.current_epoch == 2  # epoch 0 set the bar, epoch 1 missed it
    run_dir = only_run_dir(runs_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epoch"] == 2
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1
    best = Path(metrics["best_checkpoint"])
    assert (run_dir / "plots" / "test" / best.stem).is_dir()  # the test after fit used the best
    assert (run_dir / "plots" / "val" / "epoch_1" / "confusion_matrix.png").is_file()  # drawn at fit end


def accuracy(model: pl.LightningModule, data: DigitsDataModule, split: str) -> float:
    """The model's accuracy on a split, computed here rather than by the Trainer."""
    model.eval()
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    with torch.no_grad():
        correct = sum(int((model(batch).pred == batch.require_label()).sum()) for batch in loader)
    return correct / len(data.datasets[split])


@pytest.mark.slow
def test_with_ema_validation_test_and_predict_use_the_averaged_weights(runs_dir: Path) -> None:
    """configs/ema.yaml: the checkpoints hold the averaged weights, and the logged val/acc, the test after
    fit and predict from the checkpoint are exactly what those weights score (the trained ones differ)."""
    ema = ["--trainer.callbacks+", str(CONFIGS / "ema.yaml"), "--trainer.limit_test_batches", "1.0"]
    fit = main(
        cli_args("fit", "--config", PLAIN, "--config", LIMIT, *ema, "--run_name", "ema", runs_dir=runs_dir)
    )
    assert fit is not None
    metrics = json.loads((fit.run_dir / "metrics.json").read_text())
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    averaged, trained = best["state_dict"], best["current_model_state"]
    assert not all(torch.equal(averaged[k], trained[k]) for k in averaged)
    model = ConvNet(10, (1, 8, 8), channels=(32, 64), hidden=(128,))  # configs/digits.yaml's net
    model.load_state_dict(averaged)
    data = DigitsDataModule(batch_size=64, split_file=str(fit.run_dir / "split.json"))
    data.setup("fit")
    data.setup("test")
    assert accuracy(model, data, "val") == pytest.approx(metrics["best_score"], abs=1e-6)
    assert accuracy(model, data, "test") == pytest.approx(metrics["test/acc"], abs=1e-6)
    predict = main(
        cli_args(
            "predict", "--config", PLAIN, *ema, "--ckpt_path", metrics["best_checkpoint"], runs_dir=runs_dir
        )
    )
    assert predict is not None
    with open(predict.run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    with torch.no_grad():
        expected = {
            int(i): int(p)
            for batch in data.test_dataloader()
            for i, p in zip(batch.index.tolist(), model(batch).pred.tolist(), strict=True)  # type: ignore[union-attr]
        }
    assert {int(row["index"]): int(row["pred"]) for row in rows} == expected
