"""Trust: data read from a file never reaches an import or a call of code outside the allowed
namespaces (issue #17, "Code runs from a checkpoint that passes the safe loader").

Each test crafts the file an attacker could hand over (a real checkpoint from a short fit, tampered;
a split file; CIFAR-10 batches), runs the real route (the CLI, `load_from_checkpoint`, a DataModule)
and checks that the crafted code did not run (it would create a marker file) and that the user got
one `error:` line. A config passed with `--config` is not among them: like the command line, it is
the user's own word (it may name any class by design), and a run's saved config.yaml is read only
when the user passes it.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from project.checkpoint_io import check_checkpoint_hyperparameters, check_hyperparameters
from project.cli import main
from project.data.fake_cifar10 import TEST_BATCH, write_cifar10
from project.errors import UserError
from project.model import ConvNet
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, cli_args

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
CIFAR = str(CONFIGS / "cifar10.yaml")
SHORT = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
]
SHORT += ["--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1"]


# ---- crafting --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a real, short fit on digits (its checkpoints/last.ckpt is what is tampered)."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    cli = main(
        cli_args(
            "fit",
            "--config",
            DIGITS,
            *SHORT,
            "--test_after_fit",
            "false",
            "--run_name",
            "base",
            runs_dir=runs,
        )
    )
    assert cli is not None
    return cli.run_dir


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file the crafted code would create."""
    return tmp_path / "code-ran"


def shell(marker: Path) -> str:
    return f"touch {marker}"


def tampered(trained: Path, folder: Path, **hyper_parameters: Any) -> Path:
    """A copy of the trained run's last.ckpt (still loadable by torch's safe loader) with some
    hyper-parameters replaced."""
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint = copy.deepcopy(checkpoint)
    checkpoint["hyper_parameters"].update(hyper_parameters)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "crafted.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)  # passes the safe loader
    return path


def evil_module(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an importable module whose import alone creates `marker`."""
    name = f"evil_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Anything: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def refused(capsys: pytest.CaptureFixture[str], marker: Path, *args: str) -> str:
    """Run the CLI, which must exit 2 with one `error:` line and no code run; that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert not marker.exists(), "the crafted code ran"
    assert exit_info.value.code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def term(fn: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "x", "fn": fn, "prediction": "logits", "target": "label", "args": args}]


# ---- route 1: losses/metrics `fn` and `args` in a checkpoint's hyper-parameters ----------------


@pytest.mark.parametrize("subcommand", ["test", "predict", "validate", "fit"])
def test_cli_ckpt_path_runs_no_metric_fn_from_the_checkpoint(
    trained: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str], subcommand: str
) -> None:
    ckpt = tampered(trained, tmp_path, metrics=term("os.system", {"command": shell(marker)}))
    args = [subcommand, "--config", DIGITS, *SHORT, "--ckpt_path", str(ckpt)]
    line = refused(capsys, marker, *cli_args(*args, runs_dir=tmp_path / "runs"))
    assert str(ckpt) in line and "'os.system'" in line


def test_metrics_null_on_the_command_line_does_not_let_it_through(
    trained: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tampered(trained, tmp_path, metrics=term("os.system", {"command": shell(marker)}))
    args = ["test", "--config", DIGITS, *SHORT, "--ckpt_path", str(ckpt), "--model.init_args.metrics", "null"]
    assert "'os.system'" in refused(capsys, marker, *cli_args(*args, runs_dir=tmp_path / "runs"))


def test_cli_ckpt_path_runs_no_loss_fn_from_the_checkpoint(
    trained: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    popen = term("subprocess.Popen", {"args": shell(marker), "shell": True})
    ckpt = tampered(trained, tmp_path, losses=popen)
    args = ["test", "--config", DIGITS, *SHORT, "--ckpt_path", str(ckpt)]
    assert "'subprocess.Popen'" in refused(capsys, marker, *cli_args(*args, runs_dir=tmp_path / "runs"))


@pytest.mark.parametrize(
    "crafted",
    [
        pytest.param(lambda m: {"metrics": term("os.system", {"command": shell(m)})}, id="metric-os.system"),
        pytest.param(
            lambda m: {"losses": term("subprocess.Popen", {"args": shell(m), "shell": True})}, id="loss-Popen"
        ),
        # Inside an allowed namespace, but not a Metric class: refused before it is called.
        pytest.param(
            lambda m: {"metrics": term("project.cli.main", {"args": ["--help"]})}, id="metric-project-fn"
        ),
    ],
)
def test_load_from_checkpoint_runs_no_term_fn_from_the_checkpoint(
    trained: Path, tmp_path: Path, marker: Path, crafted: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tampered(trained, tmp_path, **crafted(marker))
    with pytest.raises(Exception) as info:  # jsonargparse wraps the UserError of the model's __init__
        ConvNet.load_from_checkpoint(ckpt, weights_only=True)
    assert not marker.exists()
    assert "usage:" not in capsys.readouterr().out  # project.cli.main was not called either
    assert "is refused" in str(info.value) or "nothing else is imported" in str(info.value)


def test_a_term_module_outside_the_allowed_namespaces_is_not_even_imported(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from project.model.losses import resolve_loss

    evil = evil_module(tmp_path, marker, monkeypatch)
    with pytest.raises(UserError, match="nothing else is imported or called"):
        resolve_loss(f"{evil}.Anything", "loss 'x'")
    assert not marker.exists() and evil not in sys.modules


def test_allowed_terms_still_resolve() -> None:
    from project.metrics.configured import resolve_metric
    from project.model.losses import resolve_loss

    assert resolve_loss("torch.nn.L1Loss", "t") is torch.nn.L1Loss
    assert resolve_loss("torch.nn.functional.huber_loss", "t") is torch.nn.functional.huber_loss
    assert resolve_loss("cross_entropy", "t") is torch.nn.functional.cross_entropy
    import torchmetrics

    assert resolve_metric("torchmetrics.MeanAbsoluteError", "t") is torchmetrics.MeanAbsoluteError
    assert resolve_metric("accuracy", "t") is None
    for bad in ("torch.nn.functional.torch", "torch.nn.Parameter", "torch.nn.functional._Reduction"):
        with pytest.raises(UserError):
            resolve_loss(bad, "t")


# ---- route 2: the optimizer/scheduler {class_path, init_args}, rebuilt by jsonargparse ----------


def optimizer_cases(marker: Path, evil: str) -> dict[str, dict[str, Any]]:
    return {
        # jsonargparse calls a function given as a class_path with its init_args, then the model
        # finds it is no optimizer: too late.
        "function": {"optimizer": {"class_path": "os.system", "init_args": {"command": shell(marker)}}},
        # jsonargparse imports the module a class_path names before it checks the class.
        "module-import": {"optimizer": {"class_path": f"{evil}.Anything", "init_args": {}}},
        "scheduler-import": {"scheduler": {"class_path": f"{evil}.Anything", "init_args": {}}},
        "plain-string": {"optimizer": f"{evil}.Anything"},
        "nested-class_path": {"pretrained": [{"class_path": f"{evil}.Anything"}]},
    }


CASES = ["function", "module-import", "scheduler-import", "plain-string", "nested-class_path"]


@pytest.mark.parametrize("case", CASES)
def test_cli_ckpt_path_imports_and_calls_no_optimizer_class_path_from_the_checkpoint(
    trained: Path,
    tmp_path: Path,
    marker: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    evil = evil_module(tmp_path, marker, monkeypatch)
    ckpt = tampered(trained, tmp_path, **optimizer_cases(marker, evil)[case])
    args = ["test", "--config", DIGITS, *SHORT, "--ckpt_path", str(ckpt)]
    line = refused(capsys, marker, *cli_args(*args, runs_dir=tmp_path / "runs"))
    assert str(ckpt) in line and "refused" in line
    assert evil not in sys.modules


def test_cli_ckpt_path_imports_no_model_class_from_the_checkpoint(
    trained: Path,
    tmp_path: Path,
    marker: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checkpoint's `_class_path` is never imported: refused by its namespace (and a model class
    other than the config's was refused before, by name)."""
    evil = evil_module(tmp_path, marker, monkeypatch)
    ckpt = tampered(trained, tmp_path, _class_path=f"{evil}.Anything")
    args = ["test", "--model", "project.model.ConvNet", "--data", "project.data.DigitsDataModule", *SHORT]
    line = refused(capsys, marker, *cli_args(*args, "--ckpt_path", str(ckpt), runs_dir=tmp_path / "runs"))
    assert f"{evil}.Anything" in line
    assert evil not in sys.modules


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_hyperparameters_are_checked_before_any_import(
    trained: Path, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """What BaseModel.load_from_checkpoint is to call before Lightning rebuilds the model."""
    evil = evil_module(tmp_path, marker, monkeypatch)
    ckpt = tampered(trained, tmp_path, **optimizer_cases(marker, evil)[case])
    with pytest.raises(UserError, match="refused"):
        check_checkpoint_hyperparameters(ckpt)
    assert not marker.exists() and evil not in sys.modules


def test_a_real_checkpoint_passes_the_check(trained: Path) -> None:
    check_checkpoint_hyperparameters(trained / "checkpoints" / "last.ckpt")
    check_hyperparameters(
        {"optimizer": {"class_path": "torch.optim.SGD"}, "scheduler": "torch.optim.lr_scheduler.OneCycleLR"},
        "x",
    )
    with pytest.raises(UserError, match="not a LRScheduler class"):
        check_hyperparameters({"scheduler": {"class_path": "project.model.ConvNet"}}, "x")


@pytest.mark.parametrize("case", ["function", "module-import"])
def test_load_from_checkpoint_imports_and_calls_no_optimizer_class_path(
    trained: Path, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    evil = evil_module(tmp_path, marker, monkeypatch)
    ckpt = tampered(trained, tmp_path, **optimizer_cases(marker, evil)[case])
    with pytest.raises(UserError, match="refused"):
        ConvNet.load_from_checkpoint(ckpt, weights_only=True)
    assert not marker.exists() and evil not in sys.modules


def test_a_file_named_last_in_the_working_directory_is_checked_too(
    trained: Path,
    tmp_path: Path,
    marker: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--ckpt_path last` means a resume, but LightningCLI merges the hyper-parameters of a file named
    `last` in the working directory all the same."""
    evil = evil_module(tmp_path, marker, monkeypatch)
    ckpt = tampered(trained, tmp_path / "cwd", **optimizer_cases(marker, evil)["function"])
    ckpt.rename(ckpt.with_name("last"))
    monkeypatch.chdir(ckpt.parent)
    shutil.copytree(trained, tmp_path / "runs" / "base")  # the run to resume
    args = ["fit", "--config", DIGITS, *SHORT, "--run_name", "base", "--ckpt_path", "last"]
    assert "'os.system' is refused" in refused(capsys, marker, *cli_args(*args, runs_dir=tmp_path / "runs"))


# ---- route 3: `pretrained:` reads another run's weights, never its hyper-parameters -------------


@pytest.mark.slow
def test_pretrained_takes_only_weights_from_a_crafted_run(
    trained: Path, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Already closed: load_pretrained reads `state_dict` alone, with the safe loader."""
    evil = evil_module(tmp_path, marker, monkeypatch)
    crafted = optimizer_cases(marker, evil)["function"] | {
        "metrics": term("os.system", {"command": shell(marker)}),
        "_class_path": f"{evil}.Anything",
    }
    run = tmp_path / "crafted-run"
    shutil.move(tampered(trained, run / "checkpoints", **crafted), run / "checkpoints" / "last.ckpt")
    pretrained = json.dumps([{"module": "features", "run": str(run)}])
    args = [
        "fit",
        "--config",
        DIGITS,
        *SHORT,
        "--test_after_fit",
        "false",
        "--model.init_args.pretrained",
        pretrained,
    ]
    cli = main(cli_args(*args, runs_dir=tmp_path / "runs"))
    assert cli is not None
    assert not marker.exists() and evil not in sys.modules


# ---- route 4: split files are JSON of integers ---------------------------------------------------


def test_a_crafted_split_file_is_data_only(
    tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Already closed: json.loads, then int() of every entry."""
    split = tmp_path / "split.json"
    code = f"__import__('os').system('{shell(marker)}')"
    split.write_text(json.dumps({"num_samples": 1797, "train": [code], "val": [{"class_path": "os.system"}]}))
    args = ["fit", "--config", DIGITS, *SHORT, "--data.init_args.split_file", str(split)]
    line = refused(capsys, marker, *cli_args(*args, runs_dir=tmp_path / "runs"))
    assert str(split) in line


# ---- route 5: a resumed run reads no W&B config --------------------------------------------------


def test_resume_reads_only_the_wandb_run_id_from_its_folder_name(
    trained: Path, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Already closed: on a resume, wandb_setup.py takes the W&B run id from the newest run folder's
    name; no W&B config or other file in it is read, so a crafted one runs nothing."""
    evil = evil_module(tmp_path, marker, monkeypatch)
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs / "base")
    crafted = runs / "base" / "wandb" / "offline-run-20991231_235959-crafted1"
    (crafted / "files").mkdir(parents=True)
    config = {"model": {"value": {"class_path": f"{evil}.Anything"}}, "optimizer": {"value": "os.system"}}
    (crafted / "files" / "config.yaml").write_text(json.dumps(config))
    (crafted / "files" / "wandb-metadata.json").write_text(json.dumps({"args": [shell(marker)]}))
    args = ["fit", "--config", DIGITS, *SHORT, "--test_after_fit", "false", "--run_name", "base"]
    cli = main(cli_args(*args, "--ckpt_path", "last", runs_dir=runs))
    assert cli is not None
    assert not marker.exists() and evil not in sys.modules


# ---- CIFAR-10 batches are pickles: digests first ---------------------------------------------


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_replaced_cifar10_batch_is_never_unpickled(
    tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_cifar10(tmp_path / "data", per_batch=4, test_size=4)
    files.path(TEST_BATCH).write_bytes(pickle.dumps({"data": _Touch(marker), "labels": [0]}))
    args = ["test", "--config", CIFAR, *SHORT, "--data.init_args.data_dir", str(files.root)]
    args += ["--data.init_args.download", "false", "--data.init_args.num_workers", "0"]
    line = refused(capsys, marker, *cli_args(*args, runs_dir=tmp_path / "runs"))
    assert str(files.path(TEST_BATCH)) in line and "md5" in line


@pytest.mark.slow
def test_generated_cifar10_is_read_when_its_digests_are_passed(tmp_path: Path) -> None:
    """The generated stand-in is read only when the command line passes its own digests."""
    files = write_cifar10(tmp_path / "data", per_batch=4, test_size=4)
    args = ["test", "--config", CIFAR, *SHORT, "--data.init_args.data_dir", str(files.root)]
    args += ["--data.init_args.download", "false", "--data.init_args.num_workers", "0"]
    args += ["--data.init_args.batch_md5", json.dumps(files.batch_md5)]
    cli = main(cli_args(*args, runs_dir=tmp_path / "runs"))
    assert cli is not None and cli.datamodule is not None
    assert len(cli.datamodule.datasets["test"]) == 4
