"""Every file under configs/ is loaded through the CLI's own parser, and run where its data is local.

Each file is sorted by what it holds, not by a list of today's names, so a config added later is
covered the day it lands:
- an experiment (a `model:` or `data:` section): parsed and instantiated by `python -m project fit`'s
  parser, then one training and one validation batch through the model (`--trainer.fast_dev_run 1`);
- a preset (only a `trainer:` section, e.g. debug/*.yaml, ddp.yaml): stacked on configs/digits.yaml;
  the Trainer it builds must carry every value of the file, and it then runs one epoch at most;
- a fragment (a YAML list, e.g. visuals.yaml): appended with `--trainer.callbacks+`, and each class
  it lists must be built once more than without it;
- configs/defaults.yaml, read first by every command: its callbacks must be in every Trainer;
- a search file (configs/search/NAME.yaml, for `tune`): every key an option of configs/NAME.yaml, and
  a point drawn from its space builds as that experiment's overrides.
Anything else under configs/ fails `test_every_config_file_is_exercised`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from project.cli import ProjectCLI, main
from project.data import ClassificationDataModule
from project.data.fake_cifar10 import write_cifar10
from project.model import BaseModel
from project.sweep.command import check_keys
from project.sweep.runner import overrides
from project.sweep.space import load_search
from tests.conftest import CONFIGS, cli_args

DEFAULTS = CONFIGS / "defaults.yaml"
BASE = CONFIGS / "digits.yaml"  # what presets and fragments are stacked on: offline, small
# Where an experiment needs more than its own file here, and why.
EXTRA_ARGS: dict[str, list[str]] = {
    # Its `pretrained` names a placeholder run; tests/test_terms.py trains a digits_ae run and loads it.
    "digits_frozen_encoder.yaml": ["--model.init_args.pretrained", "[]"],
    # bf16 autocast on a CPU works but takes seconds a step; the GPU setting is parsed all the same.
    "cifar10_fast.yaml": ["--trainer.precision", "32-true"],
}
# Presets that are not run here, only built and checked.
NOT_RUN = {
    "ddp.yaml": "starts one process per device; tests/test_distributed.py runs it with 2 gloo processes",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kind(path: Path) -> str:
    content = load(path)
    if path == DEFAULTS:
        return "defaults"
    if isinstance(content, list):
        return "fragment"
    if path.parent.name == "search" and isinstance(content, dict) and "params" in content:
        return "search"
    if isinstance(content, dict) and ({"model", "data"} & content.keys()):
        return "experiment"
    if isinstance(content, dict) and set(content) == {"trainer"}:
        return "preset"
    return "unknown"


def config_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*") if p.is_file())


def params(wanted: str) -> Iterator[Any]:
    for path in config_files():
        if path.suffix in (".yaml", ".yml") and kind(path) == wanted:
            yield pytest.param(path, id=path.relative_to(CONFIGS).as_posix())


def build(args: list[str], runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ProjectCLI:
    """`python -m project fit ...` up to the built model, data and Trainer, without running it."""
    monkeypatch.setattr(ProjectCLI, "_run_subcommand", lambda self, subcommand: None)
    cli = main(cli_args("fit", *args, runs_dir=runs_dir))
    monkeypatch.undo()
    assert cli is not None
    return cli


@pytest.fixture(scope="module")
def base_cli(tmp_path_factory: pytest.TempPathFactory) -> ProjectCLI:
    """configs/digits.yaml alone, built once for the tests that compare against it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return build(["--config", str(BASE)], tmp_path_factory.mktemp("runs"), monkeypatch)


@pytest.fixture(scope="module")
def cifar_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A generated CIFAR-10 in the real file format, in place of the 163 MB download."""
    files = write_cifar10(tmp_path_factory.mktemp("cifar") / "data")
    return [
        *("--data.init_args.data_dir", str(files.root)),
        *("--data.init_args.batch_md5", json.dumps(files.batch_md5)),
        *("--data.init_args.download", "false"),
    ]


def local_data_args(config: dict[str, Any], cifar_args: list[str]) -> list[str]:
    """Arguments that make a config's data local, or a failure naming what to add here."""
    data_class = str(config.get("data", {}).get("class_path", ""))
    if data_class.endswith("CIFAR10DataModule"):
        return [*cifar_args, "--data.init_args.batch_size", "8"]
    return []  # the scikit-learn datasets are bundled; a dataset that downloads fails here, by name


def test_every_config_file_is_exercised() -> None:
    unknown = [p for p in config_files() if p.suffix not in (".yaml", ".yml") or kind(p) == "unknown"]
    assert not unknown, (
        f"files under configs/ that no test loads: {unknown}. A config needs a model:/data: section "
        "(an experiment), only trainer: (a preset) or a list (a callbacks fragment); or teach "
        "tests/test_configs.py how to load it"
    )
    stale = (EXTRA_ARGS.keys() | NOT_RUN.keys()) - {p.name for p in config_files()}
    assert not stale, f"tests/test_configs.py names configs that no longer exist: {stale}"


def experiment_args(path: Path, cifar_args: list[str]) -> list[str]:
    extra = EXTRA_ARGS.get(path.name, [])
    return [
        "--config",
        str(path),
        *local_data_args(load(path), cifar_args),
        *extra,
        "--trainer.accelerator",
        "cpu",
    ]


@pytest.mark.parametrize("path", params("experiment"))
def test_an_experiment_builds(
    path: Path, runs_dir: Path, cifar_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = build(experiment_args(path, cifar_args), runs_dir, monkeypatch)
    assert isinstance(cli.model, BaseModel) and isinstance(cli.datamodule, ClassificationDataModule)
    config = load(path)
    for section, built in (("model", cli.model), ("data", cli.datamodule)):
        if section in config:  # the class the file names is the one built
            assert type(built).__name__ == config[section]["class_path"].rsplit(".", 1)[-1]


@pytest.mark.slow  # seconds each (a ResNet-18 step, the visual callbacks' drawing)
@pytest.mark.parametrize("path", params("experiment"))
def test_an_experiment_runs_a_batch(path: Path, runs_dir: Path, cifar_args: list[str]) -> None:
    """One training and one validation batch through the model, as `--config debug/fast_dev_run.yaml`."""
    args = [*experiment_args(path, cifar_args), "--trainer.fast_dev_run", "1", "--test_after_fit", "false"]
    cli = main(cli_args("fit", *args, runs_dir=runs_dir))
    assert cli is not None and cli.trainer.global_step == 1


@pytest.mark.slow  # a CLI build each (~0.5 s): the experiments are built in make test-fast too
@pytest.mark.parametrize("path", params("preset"))
def test_a_preset_sets_what_it_says(path: Path, runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = build(["--config", str(BASE), "--config", str(path)], runs_dir, monkeypatch)
    parsed = cli.config.fit.trainer
    for key, value in load(path)["trainer"].items():
        assert parsed[key] == value, (
            f"trainer.{key}: {path.name} says {value!r}, the parsed config has {parsed[key]!r}"
        )
    if "strategy" in load(path)["trainer"]:  # the Trainer was built with it
        assert type(cli.trainer.strategy).__name__.lower().startswith(str(parsed.strategy).lower())


@pytest.mark.slow  # a short real run each, with the visual callbacks' drawing
@pytest.mark.parametrize("path", [p for p in params("preset") if p.values[0].name not in NOT_RUN])
def test_a_preset_runs_on_the_digits_demo(path: Path, runs_dir: Path) -> None:
    args = [
        "--config",
        str(BASE),
        "--config",
        str(path),
        "--trainer.max_epochs",
        "1",
        "--test_after_fit",
        "false",
    ]
    cli = main(cli_args("fit", *args, runs_dir=runs_dir))
    assert cli is not None and cli.trainer.global_step >= 1


@pytest.mark.slow  # two CLI builds
@pytest.mark.parametrize("path", params("fragment"))
def test_a_callbacks_fragment_adds_its_callbacks(
    path: Path, base_cli: ProjectCLI, runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def counts(cli: ProjectCLI) -> dict[str, int]:
        names = [type(c).__name__ for c in cli.trainer.callbacks]  # type: ignore[attr-defined]
        return {name: names.count(name) for name in names}

    without = counts(base_cli)
    with_it = counts(build(["--config", str(BASE), f"--trainer.callbacks+={path}"], runs_dir, monkeypatch))
    listed = [entry["class_path"].rsplit(".", 1)[-1] for entry in load(path)]
    for name in set(listed):
        assert with_it.get(name, 0) == without.get(name, 0) + listed.count(name), name


@pytest.mark.parametrize("path", params("search"))
def test_a_search_file_varies_options_of_its_experiment(
    path: Path, runs_dir: Path, cifar_args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    search = load_search(path)
    experiment = CONFIGS / path.name  # configs/search/digits.yaml searches configs/digits.yaml
    assert experiment.is_file(), f"{path} has no experiment {experiment} to search"
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", str(experiment), "--print_config"])
    assert printed.value.code in (0, None)
    check_keys(search, yaml.safe_load(capsys.readouterr().out))
    point = optuna.create_study(sampler=search.make_sampler()).ask(search.params).params
    args = ["--config", str(experiment), *local_data_args(load(experiment), cifar_args), *overrides(point)]
    cli = build(args, runs_dir, monkeypatch)
    for name, value in point.items():  # each drawn value reached the parsed config, typed
        expected = yaml.safe_load(value) if isinstance(value, str) else value
        assert _plain(cli.config.fit.get(name)) == expected, name
    if "data.init_args.batch_size" in point:  # and the built objects
        assert getattr(cli.datamodule, "batch_size", None) == point["data.init_args.batch_size"]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_defaults_are_read_by_every_command(base_cli: ProjectCLI) -> None:
    cli = base_cli
    defaults = load(DEFAULTS)
    built = [type(c).__name__ for c in cli.trainer.callbacks]  # type: ignore[attr-defined]
    for entry in defaults["trainer"]["callbacks"]:
        assert entry["class_path"].rsplit(".", 1)[-1] in built
    assert cli.config.fit.seed_everything == defaults["seed_everything"]
