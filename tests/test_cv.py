"""k-fold cross-validation: `Split.kfold` (stratified folds, a property test), the `folds`/`fold`
arguments of every ClassificationDataModule, and `python -m project cv` end to end on digits (2 folds of
tiny fits of the plain digits config, as tests/test_sweep.py shrinks its trials)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from project import cv
from project.data import ClassificationDataModule, DigitsDataModule, Split
from project.errors import UserError
from tests.conftest import CONFIGS, own_wandb_service

CSV_ONLY = "logger: {class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: ., name: csv}}"
TINY = [  # one epoch of two batches per fold, no test after it: the folds' val metrics are what count
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--test_after_fit", "false",
]  # fmt: skip


class Tiny(ClassificationDataModule):
    """Two classes of 3 and 7 samples: at most 3 stratified folds."""

    class_names = ["a", "b"]
    input_shape = (2,)

    def load_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(10, 2), torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])


@settings(max_examples=200, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=2, max_size=60),
    folds=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_folds_are_disjoint_cover_the_pool_stratified_and_seeded(
    labels: list[int], folds: int, seed: int
) -> None:
    if min(Counter(labels).values()) < folds:
        with pytest.raises(UserError, match=r"data\.init_args\.folds=\d+ is more than the \d+ samples"):
            Split.kfold(labels, folds, 0, seed)
        return
    splits = [Split.kfold(labels, folds, fold, seed) for fold in range(folds)]
    vals = [split.val for split in splits]
    assert sorted(i for val in vals for i in val) == list(range(len(labels)))  # cover, never overlap
    for split in splits:
        assert sorted(split.train + split.val) == list(range(len(labels)))
        assert (split.folds, split.seed, split.num_samples) == (folds, seed, len(labels))
    for label in set(labels):  # each class as evenly over the folds as it can be
        per_fold = [sum(labels[i] == label for i in val) for val in vals]
        assert max(per_fold) - min(per_fold) <= 1
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    assert Split.kfold(labels, folds, folds - 1, seed) == splits[-1]  # the seed alone decides


def test_a_fold_split_is_saved_and_reloaded_with_its_fold(tmp_path: Path) -> None:
    split = Split.kfold([0, 1] * 10, folds=4, fold=3, seed=1)
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json", num_samples=20) == split
    assert json.loads((tmp_path / "split.json").read_text())["fold"] == 3


@pytest.mark.parametrize(
    ("folds", "fold", "problem"),
    [
        (5, 5, r"data\.init_args\.fold=5 is not one of the 5 folds: use 0\.\.4"),
        (5, -1, r"fold=-1 is not one of the 5 folds"),
        (None, 2, r"data\.init_args\.fold=2 needs data\.init_args\.folds"),
        (5, None, r"data\.init_args\.folds=5 needs data\.init_args\.fold, which fold \(0\.\.4\)"),
        (1, 0, r"folds=1: k-fold cross-validation needs at least 2 folds"),
    ],
)
def test_bad_fold_arguments_are_one_line(folds: int | None, fold: int | None, problem: str) -> None:
    with pytest.raises(UserError, match=problem) as caught:
        Tiny(folds=folds, fold=fold)
    assert "\n" not in str(caught.value)


def test_more_folds_than_the_smallest_class_is_one_line_at_setup() -> None:
    data = Tiny(folds=4, fold=0, batch_size=2)
    with pytest.raises(UserError, match=r"folds=4 is more than the 3 samples of class 0 .* use folds <= 3"):
        data.setup("fit")
    data = Tiny(folds=3, fold=2, batch_size=2)
    data.setup("fit")  # the largest number of folds that works
    assert data.split is not None and len(data.split.val) in (3, 4) and data.split.fold == 2


def test_a_split_file_of_another_fold_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    Split.kfold(Tiny().load_pool()[1], folds=3, fold=1, seed=42).save(path)
    Tiny(folds=3, fold=1, split_file=str(path)).setup("fit")  # the same fold: used as saved
    with pytest.raises(UserError, match=r"holds fold 1 of 3, but data\.init_args\.folds/fold ask for fold 2"):
        Tiny(folds=3, fold=2, split_file=str(path)).setup("fit")
    Split.random(10, 0.2, seed=0).save(plain := tmp_path / "plain.json")
    with pytest.raises(UserError, match=r"holds no k-fold split"):
        Tiny(folds=3, fold=0, split_file=str(plain)).setup("fit")


def test_the_pool_check_of_cv_runs_on_the_resolved_data_config() -> None:
    data = {"class_path": "project.data.DigitsDataModule", "init_args": {"folds": 3, "fold": 0}}
    cv.check_pool(data, 3)
    with pytest.raises(UserError, match=r"folds=1000 is more than the \d+ samples of class \d"):
        cv.check_pool(data, 1000)
    assert DigitsDataModule(folds=3, fold=0).val_fraction == 0.2  # kept, but unused with folds


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ([], "the following arguments are required: --folds"),
        (["--folds", "1"], "--folds 1: k-fold cross-validation needs at least 2 folds"),
        (["--folds", "x"], "argument --folds: invalid int value: 'x'"),
        (
            ["--folds", "3", "--data.init_args.fold", "1"],
            "--data.init_args.fold: cv runs `fit` for each fold",
        ),
        (["--folds", "3", "--ckpt_path", "last"], "--ckpt_path: cv runs `fit` for each fold"),
        (["--folds", "3", "--run_name", "a/b"], "--run_name 'a/b': use letters"),
    ],
)
def test_bad_cv_arguments_are_one_line_before_anything_starts(
    args: list[str], problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=problem.replace("(", r"\(").replace("[", r"\[")) as caught:
        cv.run(args)
    assert "\n" not in str(caught.value) and not any(tmp_path.iterdir())


def test_cv_json_is_the_mean_and_sample_std_of_the_folds(tmp_path: Path) -> None:
    values = [0.5, 0.75, 1.0]
    run_dirs = []
    for i, value in enumerate(values):
        (run_dir := tmp_path / f"fold-{i}").mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"val/acc": value, "epoch": 3, "train/acc": 1.0}))
        run_dirs.append(run_dir)
    summary = cv.summarize(run_dirs)
    assert list(summary["metrics"]) == ["val/acc"]  # train/* and bookkeeping are no cv metric
    assert summary["metrics"]["val/acc"] == {"mean": 0.75, "std": 0.25, "folds": values}
    assert (
        cv.markdown_table(summary).splitlines()[2] == "| val/acc | 0.7500 ± 0.2500 | 0.5000, 0.7500, 1.0000 |"
    )


# ----- end to end: python -m project cv -----


@pytest.mark.slow  # a CLI subprocess
def test_a_bad_flag_fails_before_torch_is_imported() -> None:
    script = (
        "import sys\nfrom project.cv import main\ntry:\n    main(['--folds', '3', '--resume', 'auto'])\n"
        "except SystemExit as done:\n    print(done.code)\n"
        "heavy = ('torch', 'pytorch_lightning', 'lightning_fabric', 'wandb')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[:2] == ["2", "[]"]
    assert (
        done.stderr.startswith("error: --resume: cv runs `fit` for each fold")
        and done.stderr.count("\n") == 1
    )


def test_a_cv_folder_continues_only_the_same_command(tmp_path: Path) -> None:
    cv.claim(tmp_path / "cv", 3, ["--config", "a.yaml"])
    cv.claim(tmp_path / "cv", 3, ["--config", "a.yaml"])  # the same: continued
    before = (tmp_path / "cv" / "command.json").read_bytes()
    for folds, args in (
        (4, ["--config", "a.yaml"]),
        (3, ["--config", "a.yaml", "--trainer.max_epochs", "2"]),
    ):
        with pytest.raises(UserError, match=r"holds a cv of another command .* give --run_name NEW"):
            cv.claim(tmp_path / "cv", folds, args)
    assert (tmp_path / "cv" / "command.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"exists and holds no cv"):
        cv.claim(tmp_path / "other", 3, [])


def cv_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "project", "cv", *args]
    return subprocess.run(
        command, cwd=cwd, env=own_wandb_service(), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def plain_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits demo without its visual callbacks and W&B (they cost more than the tiny fits)."""
    path = tmp_path_factory.mktemp("config") / "digits_plain.yaml"
    path.write_text((CONFIGS / "digits.yaml").read_text().replace("callbacks+: visuals.yaml", CSV_ONLY))
    return path


@pytest.mark.slow
def test_cv_trains_every_fold_reports_a_failed_one_and_continues_it(
    plain_config: Path, tmp_path: Path
) -> None:
    base = ["--config", str(plain_config), *TINY, "--trainer.default_root_dir", str(tmp_path / "runs")]
    cv_dir = tmp_path / "runs" / "digits_plain-cv2"
    run_dirs = [cv_dir / f"fold-{i}" for i in range(2)]
    # Fold 0 cannot get its run directory (a file is in the way): it fails, the next one still runs.
    cv_dir.mkdir(parents=True)
    (cv_dir / "command.json").write_text(json.dumps({"folds": 2, "base_args": base}))  # this cv's
    run_dirs[0].write_text("in the way")
    first = cv_command("--folds", "2", *base, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    log = cv_dir / "logs" / "fold-0.log"
    (failure,) = [line for line in first.stderr.splitlines() if "fold 0 failed" in line]
    assert failure.startswith(f"error: fold 0 failed: cannot create run directories under {cv_dir}")
    assert failure.endswith(f"(log: {log})") and log.is_file()
    assert "fold 1: val/acc=" in first.stdout
    assert not (cv_dir / "cv.json").exists()

    # The same command again trains fold 0 alone (fold 1 finished: kept as it is), then sums up.
    kept = (run_dirs[1] / "metrics.json").stat().st_mtime_ns
    run_dirs[0].unlink()
    done = cv_command("--folds", "2", *base, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cv digits_plain-cv2: 1 of 2 folds done" in done.stdout
    assert "fold 0: val/acc=" in done.stdout and "fold 1:" not in done.stdout
    assert (run_dirs[1] / "metrics.json").stat().st_mtime_ns == kept

    summary = json.loads((cv_dir / "cv.json").read_text())
    assert summary["folds"] == 2 and summary["run_dirs"] == [str(d) for d in run_dirs]
    metrics = [json.loads((d / "metrics.json").read_text()) for d in run_dirs]
    assert {"val/acc", "val/loss"} <= set(summary["metrics"])
    for name, entry in summary["metrics"].items():
        values = [m[name] for m in metrics]
        assert entry["folds"] == values
        assert entry["mean"] == pytest.approx(statistics.mean(values))
        assert entry["std"] == pytest.approx(statistics.stdev(values))  # ddof=1
    table = (cv_dir / "cv.md").read_text()
    assert table in done.stdout and "| val/acc | " in table
    splits = [json.loads((d / "split.json").read_text()) for d in run_dirs]
    vals = [set(s["val"]) for s in splits]
    assert sum(map(len, vals)) == len(set().union(*vals)) == splits[0]["num_samples"]  # disjoint, cover
    assert [(s["folds"], s["fold"]) for s in splits] == [(2, 0), (2, 1)]
    for split in splits:
        assert sorted(split["train"] + split["val"]) == list(range(split["num_samples"]))


@pytest.mark.slow
def test_more_folds_than_a_class_has_samples_is_one_line_and_writes_nothing(
    plain_config: Path, tmp_path: Path
) -> None:
    base = ["--config", str(plain_config), "--trainer.default_root_dir", str(tmp_path / "runs")]
    done = cv_command("--folds", "1000", *base, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        "error: the folds' fit command fails: data.init_args.folds=1000 is more than"
    )
    assert not (tmp_path / "runs").exists()
