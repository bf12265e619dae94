"""Run directories: one per run under `runs/`, shared by every process of that run, holding all of
its outputs.

    runs/20261123-171502-convnet/
        config.yaml        the config as the user gave it (config.<stage>.N.yaml for later stages
                           run in the same dir); `--config runs/<run>/config.yaml` repeats the run
        split.json         the train/val split, reusable with --data.split_file
        checkpoints/       best-epochNNN.ckpt and last.ckpt
        csv/version_0/     metrics.csv: every logged value (CSVLogger); a resumed run adds version_1
        metrics.json       final metrics (callbacks/metrics_file.py)
        plots/             visualizations per stage and epoch (PNG + JSON)
        predictions.csv    from `predict`
        wandb/             the offline W&B run (`wandb sync` uploads it)

The folder is named `<timestamp>-<model>` unless --run_name says otherwise. Relative `save_dir` and
`dirpath` values of loggers and callbacks are read as relative to it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, SaveConfigCallback

from project.errors import UserError
from project.wandb_setup import name_wandb_run

# Lightning's DDP launcher re-runs the command in child processes that inherit the environment:
# rank 0 publishes its run directory here so every rank writes to the same one.
RUN_DIR_ENV = "PROJECT_RUN_DIR"
DEFAULT_RUNS_ROOT = "runs"
Resume = Literal["never", "last", "auto"]


def launcher_rank() -> int:
    """This process's global rank when an outside launcher (torchrun, SLURM) started it, else 0."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def launcher_run_id() -> str | None:
    """A name every process of a torchrun or SLURM job shares: the rendezvous id or the job id."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return run_id
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm{job}" if job else None


def launcher_world_size() -> int:
    """How many processes an outside launcher (torchrun, SLURM) started for this job; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def start_run(config: Namespace, subcommand: str) -> tuple[Path, bool]:
    """Pick the run directory of a parsed command and publish it to the command's other processes;
    returns it and whether this run continues an earlier one there."""
    model_name = str(config.model.class_path).rsplit(".", 1)[-1].lower()
    parts = [model_name] + ([] if subcommand == "fit" else [subcommand])
    root = Path(config.trainer.default_root_dir or DEFAULT_RUNS_ROOT)
    resume: Resume = "never"
    if config.get("ckpt_path") == "last":
        resume = "last"
    elif config.resume == "auto":
        if config.get("ckpt_path") is not None:
            raise UserError("--resume auto picks the checkpoint itself: drop --ckpt_path, or drop --resume")
        resume = "auto"
    run_dir, resuming = resolve_run_dir(root, config.run_name, parts, resume)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir, resuming


def resolve_run_dir(root: Path, name: str | None, parts: list[str], resume: Resume) -> tuple[Path, bool]:
    """Pick the run directory; returns it and whether this run continues an earlier one there.

    Args:
        root: parent of all run directories (`runs/` or --trainer.default_root_dir).
        name: --run_name. None names the run `<timestamp>-<parts>` (made unique), or
            `<parts>-<job id>` under torchrun/SLURM, where every process must arrive at one name.
        parts: what the run is, e.g. ["convnet"] or ["convnet", "test"].
        resume: "last" continues the existing run `root/name`; "auto" continues it when it has a
            checkpoints/last.ckpt and starts it otherwise; "never" starts a new run.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited), resume != "never"
    if name is not None and (name in ("", ".", "..") or Path(name).name != name):
        raise UserError(
            f"--run_name {name!r} is not a folder name: give one without '/' (the run goes under "
            f"{root}/; --trainer.default_root_dir moves that)"
        )
    if name is None and launcher_world_size() > 1:
        # Processes started by torchrun/SLURM compute their names separately: they must agree.
        job = launcher_run_id()
        if job is None:
            raise UserError(
                "this process was started by a multi-process launcher without a job id: pass the same "
                "--run_name to every process (or torchrun --rdzv_id NAME)"
            )
        name = "-".join([*parts, job])
    if resume != "never" and name is None:
        raise UserError(
            f"--ckpt_path last and --resume auto continue a named run: add --run_name NAME (the folder under "
            f"{root}/ to resume), or pass the checkpoint file itself as --ckpt_path"
        )
    if name is not None:
        run_dir = root / name
        if launcher_rank() != 0:
            return run_dir, resume != "never"  # rank 0 creates it and checks it; the others only write to it
        if resume == "last":
            if not run_dir.is_dir():
                raise UserError(f"cannot resume run {name!r}: {run_dir} does not exist")
            return run_dir, True
        if resume == "auto":
            _make_dirs(run_dir, root)
            return run_dir, (run_dir / "checkpoints" / "last.ckpt").is_file()
        if run_dir.exists():
            raise UserError(
                f"run directory {run_dir} already exists and is left untouched; choose another --run_name, "
                "or add --ckpt_path last (or --resume auto) to resume that run"
            )
        _make_dirs(run_dir, root)
        return run_dir, False
    _make_dirs(root, root)
    default_name = timestamped_name(*parts)
    for attempt in range(1000):
        run_dir = root / (default_name if attempt == 0 else f"{default_name}-{attempt + 1}")
        try:
            run_dir.mkdir()  # atomic: two runs started in the same second get different folders
            return run_dir, False
        except FileExistsError:
            continue
        except OSError as e:
            raise _unusable_root(root, e) from None
    raise UserError(f"could not create a new run directory under {root}")


def _make_dirs(path: Path, root: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission, a read-only disk
        raise _unusable_root(root, e) from None


def _unusable_root(root: Path, error: OSError) -> UserError:
    reason = "it is a file" if root.is_file() else (error.strerror or str(error)).lower()
    return UserError(
        f"cannot create run directories under {root}: {reason}; pass a writable folder as "
        "--trainer.default_root_dir"
    )


def point_outputs_into(config: Namespace, run_dir: Path, resuming: bool) -> None:
    """Point a command's config (a copy: the user's is saved as given) at its run directory: the
    Trainer's root, relative `save_dir`/`dirpath` of loggers and callbacks, the W&B run, and with
    --resume auto the checkpoint to continue from."""
    if config.resume == "auto" and resuming:
        config.ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
    config.trainer.default_root_dir = str(run_dir)
    loggers = _entries(config.trainer.logger)
    for spec in loggers + _entries(config.trainer.callbacks):
        for key in ("save_dir", "dirpath"):
            value = spec.init_args.get(key) if spec.get("init_args") is not None else None
            if value is not None and not Path(value).is_absolute():
                spec.init_args[key] = str(run_dir / value)
    name_wandb_run(loggers, run_dir, resuming)


def _entries(value: Any) -> list[Any]:
    """The class_path/init_args entries of a logger or callbacks config value (which may be a bool)."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if hasattr(item, "class_path")]


class RunConfigSaver(SaveConfigCallback):
    """Saves the config in the run directory without ever overwriting one already there (a resumed
    run writes config.fit.2.yaml beside the original), and logs it to every logger.

    LightningCLI hands it the config as the user gave it: the CLI builds the classes from a copy
    pointed into the run directory. Leaving out the run's identity too (its name, and a resume's
    `ckpt_path: last`), `--config runs/<run>/config.yaml` repeats the run in a new directory."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        config = config.clone()
        config.run_name = None
        if config.get("ckpt_path") == "last":
            config.ckpt_path = None
        super().__init__(parser, config, **kwargs)

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


@contextmanager
def forgetting_run_dir() -> Iterator[None]:
    """Forget the run directory a command published when it ends (the next command in this process
    picks its own), and remove it if the command failed before writing anything into it."""
    if RUN_DIR_ENV in os.environ:  # a DDP child: the directory is its parent process's
        yield
        return
    try:
        yield
    finally:
        run_dir = os.environ.pop(RUN_DIR_ENV, None)
        if run_dir and Path(run_dir).is_dir() and not any(Path(run_dir).iterdir()):
            Path(run_dir).rmdir()


def timestamped_name(*parts: str) -> str:
    return "-".join([time.strftime("%Y%m%d-%H%M%S"), *parts])
