"""`python -m project runs` on real run directories, and the `RunStatus` callback that feeds it.

The module's runs are made once (a module fixture) by short real fits on digits: two finished with
different settings, one that diverges (failed), one SIGKILLed while running (killed), and a sweep trial
marked pruned by a trial.json written as the sweep writes it."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from project.callbacks import RunStatus
from project.cli import main as project_main
from project.data import DigitsDataModule
from project.model import ConvNet
from project.run_dir import lock_run_dir, release_run_dirs
from project.runs import find_run_dirs, lock_held, main, read_run
from tests.conftest import REPO, cli_args, kill_when

# Digits, a tiny ConvNet, one short epoch, CSV logging only (no W&B process to start).
SMALL = """
model:
  class_path: project.model.ConvNet
  init_args:
    channels: [8]
    hidden: [16]
    optimizer: {class_path: torch.optim.AdamW, init_args: {lr: 0.005}}
    scheduler: {class_path: torch.optim.lr_scheduler.OneCycleLR, init_args: {max_lr: 0.005}}
data:
  class_path: project.data.DigitsDataModule
  init_args: {batch_size: 64, num_workers: 0}
trainer:
  accelerator: cpu
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 2
  limit_test_batches: 2
  enable_model_summary: false
  logger:
    - class_path: pytorch_lightning.loggers.CSVLogger
      init_args: {save_dir: ., name: csv}
"""
MAX_LR = "--model.init_args.scheduler.init_args.max_lr"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ with: a, b (finished), diverged (failed), killed, study/trial-0001 (pruned); study/ itself
    holds what a sweep writes beside its trials and is no run."""
    base = tmp_path_factory.mktemp("runs_table")
    config = base / "small.yaml"
    config.write_text(SMALL)
    runs = base / "runs"

    def fit(*args: str, root: Path = runs) -> list[str]:
        return cli_args("fit", "--config", str(config), *args, runs_dir=root)

    # Started first: its imports take seconds, while the other runs train in this process.
    killed = runs / "killed"
    command = [
        sys.executable,
        "-m",
        "project",
        *fit("--run_name", "killed", "--trainer.max_epochs", "100000"),
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        project_main(fit("--run_name", "a"))
        project_main(fit("--run_name", "b", MAX_LR, "0.02", "--data.init_args.batch_size", "32"))
        with pytest.raises(SystemExit):  # the loss is NaN at the second step: the guard stops the run
            project_main(fit("--run_name", "diverged", MAX_LR, "1e30"))
        study = runs / "study"
        project_main(fit("--run_name", "trial-0001", root=study))
        trial = {"study": "study", "number": 1, "state": "PRUNED", "value": 0.1, "params": {"x": 1}}
        (study / "trial-0001" / "trial.json").write_text(json.dumps(trial))
        for name in ("study.db", "trials.csv", "best.yaml"):  # the sweep's own files: no run
            (study / name).write_text("")

        def live_and_seen_running() -> bool:
            record = _record(killed)
            if record.get("status") != "running" or not record.get("epochs"):  # killed mid-training
                return False
            seen_live.append(read_run(killed, runs).status)  # from this process, while it holds .lock
            return True

        seen_live: list[str] = []
        kill_when(process, live_and_seen_running, timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert seen_live == ["running"]
    return runs


def _record(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "run.json").read_text()))
    except (OSError, ValueError):
        return {}


def runs_output(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def rows_of(output: str) -> list[list[str]]:
    """The table's rows (after its header), cells split on the two spaces between columns."""
    lines = output.split("\n\n")[0].splitlines()
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[1:]]


def csv_rows(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(runs_output(capsys, *args, "--csv"))))


@pytest.mark.slow  # the module's runs: real fits through the CLI
def test_every_run_is_listed_with_its_status(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [p.relative_to(root).as_posix() for p in find_run_dirs(root)] == [
        "a", "b", "diverged", "killed", "study/trial-0001"
    ]  # fmt: skip
    rows = {row["name"]: row for row in csv_rows(capsys, str(root))}
    assert {name: row["status"] for name, row in rows.items()} == {
        "a": "finished",
        "b": "finished",
        "diverged": "failed",
        "killed": "killed",
        "study/trial-0001": "pruned",  # run.json says finished; the sweep pruned it
    }
    assert rows["diverged"]["error"].startswith("UserError: the training loss is nan")
    assert {row["model"] for row in rows.values()} == {"ConvNet"}
    for name in ("a", "b", "study/trial-0001"):
        metrics = json.loads((root / name / "metrics.json").read_text())
        assert float(rows[name]["val/acc"]) == metrics["val/acc"]
        assert float(rows[name]["test/loss"]) == metrics["test/loss"]
        assert rows[name]["epochs"] == "1"
        assert 0 < float(rows[name]["wall_s"]) < 120
    assert rows["killed"]["val/acc"] == "" and int(rows["killed"]["epochs"]) >= 1  # as far as it got
    assert float(rows["killed"]["wall_s"]) > 0


@pytest.mark.slow  # the module's runs: real fits through the CLI
def test_columns_are_the_settings_that_differ(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = {row["name"]: row for row in csv_rows(capsys, str(root))}
    differing = {"data.init_args.batch_size", MAX_LR[2:], "trainer.max_epochs"}
    settings = {key for key in rows["a"] if "." in key and "/" not in key}
    assert settings == differing  # no run_name, default_root_dir, or anything all runs share
    assert rows["b"][MAX_LR[2:]] == "0.02" and rows["a"][MAX_LR[2:]] == "0.005"
    assert rows["killed"]["trainer.max_epochs"] == "100000"

    table = runs_output(capsys, str(root))
    header = table.splitlines()[0].split()
    assert header[:5] == ["name", "model", "max_lr", "batch_size", "max_epochs"]  # short titles, config order
    assert header[-3:] == ["epochs", "wall", "status"]
    assert "diverged: UserError: the training loss is nan" in table  # why, under the table


@pytest.mark.slow  # the module's runs: real fits through the CLI
def test_sort_puts_the_best_first(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for metric, lowest_first in (("val/loss", True), ("val/acc", False)):
        rows = csv_rows(capsys, str(root), "--sort", metric)
        values = [float(row[metric]) for row in rows if row[metric]]
        assert len(values) == 3 and values == sorted(values, reverse=not lowest_first)
        assert {row["name"] for row in rows[3:]} == {"diverged", "killed"}  # no metric: last
        reversed_rows = csv_rows(capsys, str(root), "--sort", metric, "--reverse")
        assert [float(row[metric]) for row in reversed_rows[:3]] == values[::-1]
    best_first = [row["name"] for row in csv_rows(capsys, str(root), "--sort", "val/loss")]
    assert [row[0] for row in rows_of(runs_output(capsys, str(root), "--sort", "val/loss"))] == best_first


@pytest.mark.slow  # the module's runs: real fits through the CLI
def test_diff_shows_the_keys_that_differ(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = runs_output(capsys, str(root), "--diff", "a", str(root / "b"))  # a name, and a path
    lines = out.splitlines()
    assert lines[0].split() == ["key", "a", "b"]
    assert {line.split()[0]: line.split()[1:] for line in lines[1:]} == {
        "model.init_args.scheduler.init_args.max_lr": ["0.005", "0.02"],
        "data.init_args.batch_size": ["64", "32"],
    }
    diff_csv = runs_output(capsys, str(root), "--diff", "a", "study/trial-0001", "--csv")
    rows = list(csv.reader(io.StringIO(diff_csv)))
    # The trial differs in where it lives only (trainer.default_root_dir): not a setting.
    assert rows == [["key", "a", "study/trial-0001"]]
    assert "have the same config" in runs_output(capsys, str(root), "--diff", "a", "study/trial-0001")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "does not exist"),
        (["{file}"], "is a file, not a folder"),
        (["{empty}"], "no run directories under"),
        (["{empty}", "--sort"], "expected one argument"),
        (["{empty}", "--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_bad_root_or_option_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty" / "plots").mkdir(parents=True)  # folders, but no run directory
    (tmp_path / "file").write_text("")
    places = {name: tmp_path / name for name in ("missing", "file", "empty")}
    assert_one_line_error(capsys, [arg.format(**places) for arg in args], message)


@pytest.mark.slow  # the module's runs: real fits through the CLI
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--sort", "val/accuracy"],
            "--sort val/accuracy: no run has this metric; the runs have: best_score, "
            "perf/train_batches_per_sec, ",
        ),
        (["--diff", "a", "study"], "study is no run directory"),  # a sweep's study folder
        (["--diff", "a", "nothing"], "--diff: nothing is neither a folder nor a run under"),
    ],
)
def test_bad_sort_or_diff_is_one_line(
    root: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert_one_line_error(capsys, [str(root), *args], message)


def assert_one_line_error(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_run_is_read_from_its_own_files_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not searched inside a run (its W&B folder has a config.yaml of its own); a resumed run's settings
    are those of its last segment (config.fit.N.yaml); a root that is itself a run lists that run."""
    run = tmp_path / "runs" / "resumed"
    (run / "wandb" / "files").mkdir(parents=True)
    for name, epochs in (("config.yaml", 5), ("config.fit.2.yaml", 10), ("config.fit.10.yaml", 20)):
        config = {"model": {"class_path": "project.model.ConvNet"}, "trainer": {"max_epochs": epochs}}
        (run / name).write_text(json.dumps(config))  # JSON is YAML
    (run / "wandb" / "files" / "config.yaml").write_text("wandb_version: 1\n")
    (tmp_path / "runs" / ".hidden").mkdir()
    (tmp_path / "runs" / ".hidden" / "run.json").write_text("{}")
    assert find_run_dirs(tmp_path / "runs") == [run]
    assert read_run(run, tmp_path / "runs").config["trainer.max_epochs"] == 20
    assert runs_output(capsys, str(run)).splitlines()[1].split()[:2] == ["resumed", "ConvNet"]


def test_lock_probe_neither_takes_nor_drops_a_lock(tmp_path: Path) -> None:
    """Another process's lock is seen; this process's own lock is seen and kept: POSIX drops every lock
    a process holds on a file when it closes any descriptor of it, so the probe must not open it."""
    try_lock = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    print('held')\n"
        "else:\n    print('free')\n"
    )
    lock = tmp_path / ".lock"
    hold_lock = (
        "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold_lock, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert lock_held(tmp_path) is True
    finally:
        holder.kill()
        holder.wait()
    assert lock_held(tmp_path) is False
    assert lock_held(tmp_path / "nowhere") is False  # no .lock at all

    lock_run_dir(tmp_path)
    try:
        assert lock_held(tmp_path) is True
        other = subprocess.run([sys.executable, "-c", try_lock, str(lock)], capture_output=True, text=True)
        assert other.stdout.strip() == "held"  # still ours after the probe
    finally:
        release_run_dirs()


@pytest.mark.slow  # CLI subprocesses
def test_command_line_reads_files_only(root: Path) -> None:
    """`runs` loads neither torch nor Lightning nor W&B, a closed pipe ends it quietly, and
    `python -m project runs` reaches it."""
    script = (
        "import sys\nfrom project.runs import main\nmain(sys.argv[1:])\n"
        "heavy = ('torch', 'pytorch_lightning', 'lightning_fabric', 'wandb')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy), file=sys.stderr)\n"
    )
    command = [sys.executable, "-c", script, str(root), "--sort", "val/acc"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr.strip() == "[]"
    assert done.stdout.splitlines()[0].startswith("name ")
    # The reader is gone before the table is written (as with `runs | head` on a long table):
    closed = subprocess.run(f"{shlex.join(command[:-2])} | true", shell=True, cwd=REPO, capture_output=True)
    assert closed.returncode == 0 and closed.stderr.strip() == b"[]"  # no BrokenPipeError traceback
    bad = [sys.executable, "-m", "project", "runs", str(root / "nowhere")]
    answer = subprocess.run(bad, cwd=REPO, capture_output=True, text=True)
    assert answer.returncode == 2 and answer.stderr.startswith("error: ") and answer.stderr.count("\n") == 1


# ----- RunStatus on a bare Trainer -----


def _trainer(root: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    options = {"limit_train_batches": 2, "limit_val_batches": 1, "max_epochs": 1} | kwargs
    return pl.Trainer(
        default_root_dir=root, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0, **options,
    )  # fmt: skip


def _small() -> tuple[ConvNet, DigitsDataModule]:
    return ConvNet(10, (1, 8, 8), channels=(4,), hidden=(8,)), DigitsDataModule(batch_size=64)


def test_run_status_records_a_fit_and_keeps_its_start_when_resumed(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    class Watch(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append(_record(tmp_path))

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    model, data = _small()
    _trainer(tmp_path, [RunStatus(), Watch(), checkpoints]).fit(model, datamodule=data)
    assert seen[0]["status"] == "running" and seen[0]["ended"] is None
    first = _record(tmp_path)
    assert first["status"] == "finished" and first["command"] == "fit" and first["error"] is None
    assert first["epochs"] == 1 and first["segments"] == 1 and first["ended"] >= first["started"]
    assert 0 < first["wall_s"] < 60

    time.sleep(1.1)  # a gap between the segments, which the wall time leaves out
    model, data = _small()
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    _trainer(tmp_path, [RunStatus(), checkpoints], max_epochs=2).fit(model, datamodule=data, ckpt_path=ckpt)
    second = _record(tmp_path)
    assert second["started"] == first["started"] and second["segments"] == 2
    assert second["epochs"] == 2 and second["status"] == "finished"
    # The sum of the two segments: less than the time from the first start, which includes the gap.
    assert first["wall_s"] < second["wall_s"] <= time.time() - _seconds(first["started"]) - 1.0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".run.json")]  # no temp file left


def test_run_status_records_a_failure(tmp_path: Path) -> None:
    class Broken(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            raise RuntimeError("CUDA out of memory\nmore detail")

    model, data = _small()
    with pytest.raises(RuntimeError):
        _trainer(tmp_path, [RunStatus(), Broken()]).fit(model, datamodule=data)
    record = _record(tmp_path)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: CUDA out of memory"
    assert record["epochs"] == 0 and record["ended"] is not None


class StatusWhenTheFitEnds(pl.Callback):
    """Notes what run.json says once the fit stage has ended (RunStatus, a default callback, wrote first)."""

    seen: list[str] = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.seen.append(_record(Path(trainer.default_root_dir)).get("status", "none"))


@pytest.mark.slow  # two runs through the CLI
def test_a_fit_with_a_test_after_it_is_finished_when_the_test_is(tmp_path: Path) -> None:
    """Killed between its fit and its test, a run is not finished (`cv` would count a fold that has
    no test metrics); without a test after it, the fit's end finishes it."""
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    StatusWhenTheFitEnds.seen.clear()
    for name, test_after_fit in (("fit_and_test", "true"), ("fit_only", "false")):
        args = ["--run_name", name, "--test_after_fit", test_after_fit]
        probe = "--trainer.callbacks+=tests.test_runs.StatusWhenTheFitEnds"
        assert project_main(cli_args("fit", "--config", str(config), probe, *args, runs_dir=tmp_path))
    assert StatusWhenTheFitEnds.seen == ["running", "finished"]
    assert [_record(tmp_path / name)["status"] for name in ("fit_and_test", "fit_only")] == ["finished"] * 2
    assert "test/acc" in json.loads((tmp_path / "fit_and_test" / "metrics.json").read_text())


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
