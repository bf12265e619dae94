"""The command line: LightningCLI with a run directory per command and model sizes linked from the data.

    python -m project                                   # = fit --config configs/cifar10.yaml
    python -m project fit --config configs/digits.yaml  # offline demo
    python -m project fit --config configs/digits.yaml --config configs/debug/fast_dev_run.yaml
    python -m project fit --config configs/digits.yaml --trainer.max_epochs 5
    python -m project fit --config configs/digits.yaml --print_config
    python -m project test --config configs/digits.yaml --ckpt_path runs/<run>/checkpoints/last.ckpt
    python -m project predict --config configs/digits.yaml --ckpt_path runs/<run>/checkpoints/last.ckpt
    (the other commands are dispatched in __main__.py: tune, runs, cv, lr_find, export, ...)

`configs/defaults.yaml` is read first by every subcommand (loggers, checkpoints, seed), then each
`--config` in order, then the dotted overrides. Elsewhere: run directories (run_dir.py), checks of
--ckpt_path (checkpoint_io.py), one-line errors (parser.py), W&B (wandb_setup.py), metrics.json
(callbacks/metrics_file.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from project.callbacks.run_status import RunStatus
from project.checkpoint_io import check_ckpt_path
from project.data import ClassificationDataModule
from project.errors import UserError
from project.model import BaseModel
from project.parser import ProjectArgumentParser, add_core_arguments, add_run_arguments, user_problem
from project.run_dir import (
    RunConfigSaver,
    forgetting_run_dir,
    point_outputs_into,
    run_summary,
    start_run,
    warn_about_callbacks,
)
from project.wandb_setup import choose_wandb_mode, closing_wandb_run, drop_anonymous_setting

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_ARGS = ["fit", "--config", str(CONFIG_DIR / "cifar10.yaml")]
SUBCOMMANDS = ("fit", "validate", "test", "predict")
DESCRIPTION = (
    "Train, evaluate and predict with Lightning (the subcommands below). Other commands, each with its "
    "own --help: tune (sweeps), cv (k-fold cross-validation), runs (the table of runs), lr_find and "
    "scale_batch_size (Lightning's Tuner), export (ONNX / torch.export)."
)
# Model arguments filled in from DataModule attributes: {model argument: data attribute}.
LINKED = {"num_classes": "num_classes", "in_shape": "input_shape"}


class ProjectCLI(LightningCLI):
    run_dir: Path
    resuming: bool  # whether this run continues an earlier one in run_dir

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_core_arguments(parser, self.trainer_class, self._model_class, self._datamodule_class)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_run_arguments(parser)
        # The model's sizes come from the data, so the two cannot disagree (setting them is an error).
        for target, source in LINKED.items():
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        # Private, but the only hook between parsing and Lightning's own torch.load of --ckpt_path
        # (for the model's hyperparameters), which ends in a traceback on a bad file.
        config = self.config.get(str(self.config.get("subcommand")))
        safe = config is None or config.get("weights_only") is not False
        if config is not None and config.get("ckpt_path") is not None:
            model = config.model.class_path if config.get("model") else None
            check_ckpt_path(config.ckpt_path, weights_only=safe, model_class=model)
        if safe:
            super()._parse_ckpt_path()  # Lightning's reader insists on weights_only=True

    def before_instantiate_classes(self) -> None:
        warn_about_callbacks(self.config[self.subcommand], str(self.subcommand), CONFIG_DIR / "defaults.yaml")
        self.run_dir, self.resuming = start_run(self.config[self.subcommand], str(self.subcommand))

    def instantiate_classes(self) -> None:
        # LightningCLI hands `self.config` to the config saver, so it stays as the user gave it: the
        # classes are built from a copy whose outputs point into the run directory.
        run_config = self.config.clone()
        point_outputs_into(run_config[self.subcommand], self.run_dir, self.resuming)
        # Values given for linked arguments (by hand, or from a checkpoint's hyperparameters with
        # --ckpt_path) are replaced by the data's; refuse rather than silently drop a disagreeing one.
        given = {target: self.config[self.subcommand].model.init_args.get(target) for target in LINKED}
        self.config_init = self.parser.instantiate_classes(run_config)
        self.datamodule = self.config_init[self.subcommand].get("data")
        self.model = self.config_init[self.subcommand].get("model")
        try:
            self.trainer = self.instantiate_trainer()
        except (ValueError, TypeError) as e:  # how Lightning refuses a trainer.* value it cannot use
            raise UserError(" ".join(str(e).split())) from None
        drop_anonymous_setting(self.trainer.loggers)
        for target, source in LINKED.items():
            value, expected = _plain(given[target]), _plain(getattr(self.datamodule, source))
            if value is not None and value != expected:
                raise UserError(
                    f"model.init_args.{target}={value} disagrees with data.{source}={expected}. "
                    f"The model's {target} is set from the data: remove it from the config, or with "
                    f"--ckpt_path use a checkpoint trained on this dataset"
                )

    def tests_after_fit(self) -> bool:
        """Whether this process tests the fit's best checkpoint after the fit (`--test_after_fit`)."""
        return bool(self.config.fit.test_after_fit and getattr(self.datamodule, "has_test_split", False))

    def before_fit(self) -> None:
        if self.tests_after_fit():  # the run is finished when its test is
            for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, RunStatus):
                    callback.last_stage = "test"

    def after_fit(self) -> None:
        if self.tests_after_fit():
            best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")  # 1st ModelCheckpoint
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def main(args: list[str] | None = None, cli_class: type[ProjectCLI] = ProjectCLI) -> ProjectCLI | None:
    """Entry point of `python -m project`; returns the CLI object (for tests) or exits with status 2
    and one clear message on a `UserError`. `cli_class`: a ProjectCLI that runs `fit` its own way
    (finders.py)."""
    if args is None and not sys.argv[1:]:
        args = DEFAULT_ARGS  # plain `python -m project`: the default demo
    choose_wandb_mode()
    # No abbreviations: --trainer.max_epoch must be an error, not max_epochs in disguise.
    command = {"default_config_files": [str(CONFIG_DIR / "defaults.yaml")], "allow_abbrev": False}
    try:
        with forgetting_run_dir(), closing_wandb_run():
            cli = cli_class(
                BaseModel,
                ClassificationDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=RunConfigSaver,
                auto_configure_optimizers=False,
                parser_class=ProjectArgumentParser,
                parser_kwargs={"prog": "python -m project", "allow_abbrev": False, "description": DESCRIPTION}
                | dict.fromkeys(SUBCOMMANDS, command),
                args=args,  # None: LightningCLI reads sys.argv itself
            )
    except (ValueError, MisconfigurationException) as e:  # the latter: Lightning's word for a bad setting
        problem = user_problem(e)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    if cli.trainer.is_global_zero:
        print(run_summary(cli.run_dir))
    return cli
