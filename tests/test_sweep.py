"""`python -m project tune`: real Optuna studies of real digits fits, each trial a process of its own.

One 4-trial study (module fixture) serves the results, best.yaml, pruning and W&B group checks; the
kill-and-continue, parallel-worker (SQLite, and PostgreSQL with two tune processes) and bad-input tests
make their own. Trials are 2 short epochs; everything else is the shipped digits config.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from project import runs
from project.cli import main as fit_main
from project.errors import UserError
from project.sweep import command, runner
from project.sweep.space import load_search
from project.sweep.storage import open_storage
from tests.conftest import CONFIGS, own_wandb_service, unused_port

SHORT = [  # two short epochs per trial
    "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "3",
    "--test_after_fit", "false",
]  # fmt: skip
# A hopeless learning rate beside a good one, on a 2x2 grid: with one finished trial to compare
# against, the median pruner stops the hopeless trials after their first epoch.
SEARCH = {
    "objective": "val/acc",
    "sampler": "grid",
    "pruner": {"median": {"n_startup_trials": 1, "n_warmup_steps": 0}},
    "seed": 3,
    "params": {
        "model.init_args.scheduler.init_args.max_lr": {"categorical": [0.01, 1.0e-7]},
        "model.init_args.hidden": {"categorical": [[32], [64]]},
    },
}
# One good learning rate, two widths: for the tests that count trials rather than compare them.
GOOD = {
    "model.init_args.scheduler.init_args.max_lr": {"categorical": [0.01]},
    "model.init_args.hidden": {"categorical": [[32], [64]]},
}
# The digits demo without its visual callbacks and W&B: for the tests that only count trials.
CSV_ONLY = "logger: {class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: ., name: csv}}"
PLAIN_CONFIG = (CONFIGS / "digits.yaml").read_text().replace("callbacks+: visuals.yaml", CSV_ONLY)


def plain(folder: Path) -> list[str]:
    """Base arguments of a study of the plain digits config, with its runs under `folder`/runs."""
    path = folder / "digits_plain.yaml"
    path.write_text(PLAIN_CONFIG)
    assert "visuals" not in PLAIN_CONFIG and CSV_ONLY in PLAIN_CONFIG
    return ["--config", str(path), *SHORT, "--trainer.default_root_dir", str(folder / "runs")]


def write_search(folder: Path, **changes: Any) -> Path:
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(SEARCH | changes))
    return path


def tune(*args: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    command_line = [sys.executable, "-m", "project", "tune", *args]
    env = own_wandb_service()
    return subprocess.run(
        command_line, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs
    )


def trials_csv(study_dir: Path) -> list[dict[str, str]]:
    with (study_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A 4-trial study of the shipped digits config: its directory and the tune command's output."""
    folder = tmp_path_factory.mktemp("study")
    search = write_search(folder)
    args = [
        "--config",
        str(CONFIGS / "digits.yaml"),
        *SHORT,
        "--trainer.default_root_dir",
        str(folder / "runs"),
    ]
    done = tune("--search", str(search), "--n_trials", "4", *args, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "runs" / "search", done


@pytest.mark.slow
def test_a_study_writes_its_trials_table_best_config_and_plots(study: tuple[Path, Any]) -> None:
    study_dir, done = study
    rows = trials_csv(study_dir)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    assert set(rows[0]) >= {"val/acc", "model.init_args.scheduler.init_args.max_lr", "duration_s", "run_dir"}
    for row in rows:  # every trial is a whole fit run of its own, named by its number
        run_dir = study_dir.parent.parent / row["run_dir"]  # relative to where tune ran
        assert run_dir == study_dir / f"trial-{int(row['number']):04d}"
        for name in ("config.yaml", "split.json", "metrics.json", "trial.json", "checkpoints/last.ckpt"):
            assert (run_dir / name).is_file(), f"{run_dir.name} lacks {name}"
        assert any((run_dir / "plots").rglob("*.png"))
        assert json.loads((run_dir / "trial.json").read_text())["state"] == row["state"].upper()
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values"):
        assert (study_dir / "plots" / f"{name}.png").stat().st_size > 10_000
    assert "best: trial" in done.stdout and "best.yaml" in done.stdout


@pytest.mark.slow
def test_a_hopeless_learning_rate_is_pruned_and_its_run_kept(study: tuple[Path, Any]) -> None:
    study_dir, _ = study
    rows = trials_csv(study_dir)
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, rows
    for row in pruned:
        assert float(row["model.init_args.scheduler.init_args.max_lr"]) == 1.0e-7
        run_dir = study_dir / f"trial-{int(row['number']):04d}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert (
            metrics["epoch"] < 2
        )  # stopped before its last epoch, cleanly: metrics.json and last.ckpt written
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    good = [r for r in rows if float(r["model.init_args.scheduler.init_args.max_lr"]) == 0.01]
    assert all(r["state"] == "complete" for r in good)


@pytest.mark.slow
def test_the_runs_table_lists_a_studys_trials(study: tuple[Path, Any]) -> None:
    """`python -m project runs runs/<study>`: a row per trial, with the searched values as the columns
    that differ, its val/acc and its status (pruned for the pruned ones)."""
    study_dir, _ = study
    table = list(csv.DictReader(io.StringIO(runs.runs_command([str(study_dir), "--csv"]))))
    by_name = {row["name"]: row for row in table}
    trials = trials_csv(study_dir)
    assert sorted(by_name) == [f"trial-{int(t['number']):04d}" for t in trials]
    for trial in trials:
        row = by_name[f"trial-{int(trial['number']):04d}"]
        lr = "model.init_args.scheduler.init_args.max_lr"
        assert float(row[lr]) == float(trial[lr])
        assert row["model.init_args.hidden"] == trial["model.init_args.hidden"].replace(" ", "")
        assert row["status"] == {"complete": "finished", "pruned": "pruned"}[trial["state"]]
        assert row["val/acc"] != ""
    assert "trainer.default_root_dir" not in table[0]  # the same for all: no column


@pytest.mark.slow
def test_best_yaml_repeats_the_best_trial_as_a_plain_fit(study: tuple[Path, Any], tmp_path: Path) -> None:
    study_dir, _ = study
    rows = [r for r in trials_csv(study_dir) if r["state"] == "complete"]
    best = max(rows, key=lambda r: float(r["val/acc"]))
    best_yaml = study_dir / "best.yaml"
    assert "TrialReport" not in best_yaml.read_text()
    cli = fit_main(["fit", "--config", str(best_yaml), "--trainer.default_root_dir", str(tmp_path)])
    assert cli is not None
    metrics = json.loads((cli.run_dir / "metrics.json").read_text())
    assert metrics["val/acc"] == pytest.approx(float(best["val/acc"]), abs=1e-6)


@pytest.mark.slow
def test_the_trials_of_a_study_share_a_wandb_group(study: tuple[Path, Any]) -> None:
    study_dir, _ = study
    (offline_run,) = (study_dir / "trial-0000" / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(offline_run)], capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    (run,) = [r["run"] for r in records if r.get("type") == "run"]
    assert run["run_group"] == "search" and run["display_name"] == "trial-0000"


def test_an_unreachable_storage_fails_within_15_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(UserError, match=r"cannot use the study storage postgresql://u:\*\*\*@127\.0\.0\.1"):
        open_storage(f"postgresql://u:secret@127.0.0.1:{unused_port()}/db")
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"float": [0.1]}, r"float needs \[low, high\]"),
        ({"float": [0.1, 0.01]}, r"float needs \[low, high\] with float low < high"),
        ({"int": [1.5, 4]}, r"int needs \[low, high\]"),
        ({"float": [0.0, 1.0], "log": True}, r"log: true needs low > 0"),
        ({"categorical": []}, r"categorical needs a non-empty list"),
        ({"uniform": [0, 1]}, r"give one of \{float"),
        ({"float": [0, 1], "choices": 2}, r"'choices' does not go with float"),
    ],
)
def test_a_malformed_distribution_is_one_line(tmp_path: Path, spec: dict[str, Any], problem: str) -> None:
    path = write_search(tmp_path, params={"model.init_args.hidden": spec})
    with pytest.raises(UserError, match=problem) as caught:
        load_search(path)
    assert "params.model.init_args.hidden" in str(caught.value) and "\n" not in str(caught.value)


def test_search_file_settings_are_checked(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sampler": "annealing"}, "sampler must be one of tpe, random, grid, cmaes"),
        ({"pruner": {"median": {"n_startup": 2}}}, "pruner median: "),
        ({"direction": "up"}, "direction must be minimize or maximize"),
        ({"trials": 3}, "unknown key 'trials'"),
    ]
    for changes, problem in cases:
        with pytest.raises(UserError, match=problem):
            load_search(write_search(tmp_path, **changes))


@pytest.mark.slow
def test_bad_input_to_tune_is_one_line_and_writes_no_study(tmp_path: Path) -> None:
    # A search key that is not an option of the config, with the closest ones.
    typo_params = {"model.init_args.scheduler.init_args.max_rl": {"float": [0.001, 0.1]}}
    typo = write_search(tmp_path, sampler="random", params=typo_params)
    done = tune("--search", str(typo), *plain(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"error: {typo}: params.model.init_args.scheduler.init_args.max_rl is not an option of the base "
        "config; "
        "did you mean model.init_args.scheduler.init_args.max_lr or "
    )
    assert not (tmp_path / "runs").exists()
    # A base command that fails is reported once, before any trial.
    done = tune(
        "--search", str(write_search(tmp_path)), *plain(tmp_path), "--trainer.max_epoch", "3", cwd=tmp_path
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "the base command of the trials fails: trainer.max_epoch is not an option of `fit`" in done.stderr


@pytest.mark.slow
def test_an_objective_the_trials_never_log_stops_the_study(tmp_path: Path) -> None:
    search = write_search(tmp_path, objective="val/accuracy", pruner="none", sampler="random", params=GOOD)
    runs = tmp_path / "runs"
    done = tune("--search", str(search), "--n_trials", "3", *plain(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: the objective val/accuracy is never logged by this run; it logs ")
    assert "val/acc" in line and "val/loss" in line
    assert len(list((runs / "search").glob("trial-*"))) == 1  # stopped after the first trial's first epoch


@pytest.mark.slow
def test_a_study_refuses_another_search_space_and_more_workers_than_trials(study: tuple[Path, Any]) -> None:
    study_dir, _ = study
    url = f"sqlite:///{study_dir / 'study.db'}"
    storage = open_storage(url)
    search = load_search(
        write_search(study_dir.parent.parent, params={"model.init_args.hidden": {"categorical": [[8]]}})
    )
    before = study_dir.joinpath("study.db").read_bytes()
    with pytest.raises(UserError, match=r"was made with another search space.*give --study_name NEW"):
        command.open_study(storage, url, "search", search, [])
    assert study_dir.joinpath("study.db").read_bytes() == before


@pytest.mark.slow
def test_the_base_check_and_a_trial_run_in_the_spare_or_afresh_when_it_died(tmp_path: Path) -> None:
    """command.base_config in the first spare (runner.run_in_spare): the config a `fit --print_config`
    prints, or a bad base command's error line; then runner.launch_run hands the spare its trial, whose output
    goes to the trial's log. A spare that died gives None: base_config runs a process of its own, and the
    trial starts afresh. (`runs` on an empty folder stands in for a fit: the same dispatch, one line of
    output, no training.)"""
    base = ["--config", str(CONFIGS / "digits.yaml"), "--trainer.max_epochs", "3"]
    spare = runner.start_spare()
    try:
        config = command.base_config(base, spare)
        assert config["trainer"]["max_epochs"] == 3
        assert config["model"]["class_path"] == "project.model.ConvNet"
        bad = runner.run_in_spare(spare, ["fit", *base, "--trainer.max_epoch", "3", "--print_config"])
        assert bad is not None and bad.returncode == 2 and bad.stdout == ""
        assert "did you mean trainer.max_epochs" in bad.stderr
        log = tmp_path / "trial.log"
        assert runner.launch_run(spare, ["runs", str(tmp_path)], {}, log) is spare
        assert spare.wait(timeout=120) == 2 and log.read_text().startswith("error: no run directories")
    finally:
        spare.kill()
        spare.wait()
    assert runner.run_in_spare(spare, ["fit", "--print_config"]) is None  # it has ended
    assert command.base_config(base, spare) == config  # in a process of its own instead
    log = tmp_path / "afresh.log"
    process = runner.launch_run(spare, ["runs", str(tmp_path)], {"WANDB_RUN_GROUP": "g"}, log)
    assert process is not spare and process.wait(timeout=120) == 2
    assert log.read_text().startswith(f"error: no run directories under {tmp_path}")
