"""The command line: LightningCLI with run directories, linked model/data sizes and a few extras.

    python -m project                                   # = fit --config configs/cifar10.yaml
    python -m project fit --config configs/digits.yaml  # offline demo
    python -m project fit --config configs/digits.yaml --config configs/debug/fast_dev_run.yaml
    python -m project fit --config configs/digits.yaml --model.lr 0.01 --trainer.max_epochs 5
    python -m project fit --config configs/digits.yaml --print_config
    python -m project test --config configs/digits.yaml --ckpt_path runs/<run>/checkpoints/last.ckpt
    python -m project predict --config configs/digits.yaml --ckpt_path runs/<run>/checkpoints/last.ckpt

`configs/defaults.yaml` is read first by every subcommand (loggers, checkpoints, seed), then each
`--config` in order, then the dotted overrides.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from project.checkpoint_io import check_checkpoint
from project.data import ClassificationDataModule
from project.errors import UserError
from project.model import BaseModel
from project.parser import ProjectArgumentParser
from project.run_dir import RUN_DIR_ENV, Resume, resolve_run_dir, wandb_run_id
from project.wandb_mode import choose_wandb_mode

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_ARGS = ["fit", "--config", str(CONFIG_DIR / "cifar10.yaml")]
SUBCOMMANDS = ("fit", "validate", "test", "predict")
DEFAULT_RUNS_ROOT = "runs"
# --ckpt_path values Lightning resolves itself, rather than file paths.
LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")
# Model arguments filled in from DataModule attributes: {model argument: data attribute}.
LINKED = {"num_classes": "num_classes", "in_shape": "image_shape"}


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config in the run directory without ever overwriting one already there
    (a resumed run writes config.fit.2.yaml beside the original), and logs it to every logger.

    It saves the config as the user gave it, before output paths were pointed into this run's
    directory, so `--config runs/<run>/config.yaml` repeats the run in a new directory."""

    def __init__(self, parser: LightningArgumentParser, config: Any, user_config: Any = None, **kwargs: Any):
        super().__init__(parser, config if user_config is None else user_config, **kwargs)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if (log_dir / self.config_filename).exists():
            name = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum ("fit")
            n = 2
            while (log_dir / f"config.{name}.{n}.yaml").exists():
                n += 1
            self.config_filename = f"config.{name}.{n}.yaml"
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict()})


class ProjectCLI(LightningCLI):
    run_dir: Path

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Folder under runs/ (default: timestamp-model). With --ckpt_path last or --resume auto: "
            "the run to continue.",
        )
        parser.add_argument(
            "--resume",
            type=Literal["never", "auto"],
            default="never",
            help="auto: continue run --run_name from its last.ckpt if it has one, else start it "
            "(the same command for a first start and for every restart of a preempted job).",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint when the dataset has a test split.",
        )
        # The model's sizes come from the data, so the two cannot disagree (setting them is an error).
        for target, source in LINKED.items():
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path here to take the model's hyperparameters from it. Check the
        # file first: a truncated, unsafe or other-model checkpoint gets one message, not a traceback.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config else None
        if config is None or ckpt_path is None or ckpt_path in LIGHTNING_CKPT_ALIASES:
            return
        path = Path(ckpt_path)
        check_checkpoint(path)
        safe = config.get("weights_only") is not False
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=safe, mmap=True)
        except pickle.UnpicklingError as e:
            reason = str(e).strip().splitlines()[0]
            raise UserError(
                f"checkpoint {path} holds objects the safe loader refuses to unpickle ({reason}). "
                f"Only if you trust where it came from, load it anyway with --weights_only false"
            ) from None
        saved = checkpoint.get("hyper_parameters", {}).get("_class_path")
        wanted = config.model.class_path if config.get("model") else None
        if saved and wanted and saved != wanted:
            raise UserError(
                f"checkpoint {path} holds a {saved}, but the config builds a {wanted}: use the config it was "
                f"trained with (its run's config.yaml), or --model {saved}"
            )
        if safe:
            super()._parse_ckpt_path()  # Lightning's reader insists on weights_only=True

    def instantiate_classes(self) -> None:
        # Values given for linked arguments (by hand, or from a checkpoint's hyperparameters with
        # --ckpt_path) are replaced by the data's; refuse rather than silently drop a disagreeing one.
        init_args = self.config[self.subcommand].model.init_args
        given = {target: init_args.get(target) for target in LINKED}
        super().instantiate_classes()
        for target, source in LINKED.items():
            value, expected = given[target], getattr(self.datamodule, source)
            if value is not None and _plain(value) != _plain(expected):
                value, expected = _plain(value), _plain(expected)
                raise UserError(
                    f"model.init_args.{target}={value} disagrees with data.{source}={expected}. "
                    f"The model's {target} is set from the data: remove it from the config, or with "
                    f"--ckpt_path use a checkpoint trained on this dataset"
                )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        model_name = str(config.model.class_path).rsplit(".", 1)[-1].lower()
        parts = [model_name] + ([] if self.subcommand in (None, "fit") else [str(self.subcommand)])
        root = Path(config.trainer.default_root_dir or DEFAULT_RUNS_ROOT)
        resume: Resume = "never"
        if config.get("ckpt_path") == "last":
            resume = "last"
        elif config.resume == "auto":
            if config.get("ckpt_path") is not None:
                raise UserError(
                    "--resume auto picks the checkpoint itself: drop --ckpt_path, or drop --resume"
                )
            resume = "auto"
        self.run_dir, resuming = resolve_run_dir(root, config.run_name, parts, resume)
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        if resume == "auto" and resuming:
            config.ckpt_path = str(self.run_dir / "checkpoints" / "last.ckpt")
        # The saved config describes the experiment, not this run's identity: without the run's
        # name and a resume's `ckpt_path: last`, it repeats the run in a new directory.
        user_config = config.clone()
        user_config.run_name = None
        if user_config.get("ckpt_path") == "last":
            user_config.ckpt_path = None
        self.save_config_kwargs["user_config"] = user_config
        config.trainer.default_root_dir = str(self.run_dir)
        # Relative output paths of loggers and callbacks are read as relative to the run directory.
        for spec in _specs(config.trainer.logger) + _specs(config.trainer.callbacks):
            for key in ("save_dir", "dirpath"):
                value = spec.init_args.get(key) if spec.get("init_args") is not None else None
                if value is not None and not Path(value).is_absolute():
                    spec.init_args[key] = str(self.run_dir / value)
            if spec.class_path.endswith("WandbLogger"):
                if spec.init_args.get("name") is None:
                    spec.init_args["name"] = self.run_dir.name
                # A resumed run logs into the W&B run it started, not a second one.
                if resuming and spec.init_args.get("id") is None:
                    spec.init_args["id"] = wandb_run_id(self.run_dir)

    def after_fit(self) -> None:
        metrics = self._metrics()
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") or None
        if best:
            metrics["best_checkpoint"] = best
            score = getattr(checkpoint, "best_model_score", None)
            metrics["best_score"] = None if score is None else float(score)
        if self.config.fit.test_after_fit and getattr(self.datamodule, "has_test_split", False):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)
            metrics |= self._metrics()
        self._write_metrics(metrics)

    def after_validate(self) -> None:
        self._write_metrics(self._metrics())

    def after_test(self) -> None:
        self._write_metrics(self._metrics())

    def _metrics(self) -> dict[str, Any]:
        logged = self.trainer.callback_metrics
        # A value logged on step and epoch appears as `x`, `x_step` and `x_epoch`; `x` is the epoch value.
        metrics: dict[str, Any] = {
            k: float(v)
            for k, v in logged.items()
            if not (k.endswith(("_step", "_epoch")) and k.rsplit("_", 1)[0] in logged)
        }
        return {"epoch": self.trainer.current_epoch, "global_step": self.trainer.global_step} | metrics

    def _write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.trainer.is_global_zero:
            path = self.run_dir / "metrics.json"
            previous = json.loads(path.read_text()) if path.is_file() else {}
            path.write_text(json.dumps(previous | metrics, indent=2, sort_keys=True) + "\n")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _specs(value: Any) -> list[Any]:
    """The class_path/init_args entries of a logger or callbacks config value (which may be a bool)."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if hasattr(item, "class_path")]


def _user_problem(error: BaseException) -> BaseException | None:
    """The UserError (or Lightning MisconfigurationException) behind `error`. jsonargparse wraps
    errors raised in constructors in a union-type error whose message buries the real one."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (UserError, MisconfigurationException)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main(args: list[str] | None = None) -> ProjectCLI | None:
    """Entry point of `python -m project`; returns the CLI object (for tests) or exits with status 2
    and one clear message on a `UserError`."""
    if args is None and not sys.argv[1:]:
        args = DEFAULT_ARGS  # plain `python -m project`: the default demo
    # W&B needs no account or server by default; WANDB_MODE=online uploads as the run goes.
    choose_wandb_mode()
    inherited_run_dir = RUN_DIR_ENV in os.environ
    cli: ProjectCLI | None = None
    try:
        cli = ProjectCLI(
            BaseModel,
            ClassificationDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            auto_configure_optimizers=False,
            parser_class=ProjectArgumentParser,
            parser_kwargs={
                "prog": "python -m project",
                # No abbreviations: --trainer.max_epoch must be an error, not max_epochs in disguise.
                "allow_abbrev": False,
                **{
                    cmd: {"default_config_files": [str(CONFIG_DIR / "defaults.yaml")], "allow_abbrev": False}
                    for cmd in SUBCOMMANDS
                },
            },
            args=args,  # None: LightningCLI reads sys.argv itself
        )
    except (ValueError, MisconfigurationException) as e:  # the latter: Lightning's word for a bad setting
        problem = _user_problem(e)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        # Close the W&B run this command started: Lightning's WandbLogger would otherwise reuse a
        # still-open run in the next command of the same process (a notebook, a test session).
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
        if not inherited_run_dir:
            run_dir = os.environ.pop(RUN_DIR_ENV, None)
            # A run that failed before writing anything leaves no empty folder behind.
            if run_dir and Path(run_dir).is_dir() and not any(Path(run_dir).iterdir()):
                Path(run_dir).rmdir()
    if cli.trainer.is_global_zero:
        print(f"Run directory: {cli.run_dir}")
    return cli
