"""Run directories: one per run under `runs/`, shared by every process of that run, holding all of
its outputs.

    runs/20261123-171502-digits-convnet/
        config.yaml        the config as the user gave it (config.<stage>.N.yaml for later stages
                           run in the same dir); `--config runs/<run>/config.yaml` repeats the run
        split.json         the train/val split, reusable with --data.split_file
        checkpoints/       best-epochNNN.ckpt and last.ckpt
        csv/version_0/     metrics.csv: every logged value (CSVLogger); a resumed run adds version_1
        metrics.json       final metrics (callbacks/metrics_file.py)
        plots/             visualizations per stage and epoch (PNG + JSON)
        predictions.csv    from `predict`
        wandb/             the offline W&B run (`wandb sync` uploads it)
        .lock              the host and pid of the job writing here (one job at a time)

The folder is named `<timestamp>-<experiment>-<model>[-<command>]` (the experiment: --experiment, or
the stem of the last --config that sets model or data) unless --run_name says otherwise. Relative
`save_dir` and `dirpath` values of loggers and callbacks are read as relative to it. A fast_dev_run
gets a temporary folder instead, removed when it ends: it keeps nothing.

One job writes to a run directory at a time: the job's rank 0 holds a lock on its `.lock` file (which
names the holder's host and pid) for as long as the command runs. A second job, say a requeued one
racing a manual restart, is refused with one line naming the holder. The operating system releases
the lock when the holder exits however it exits, SIGKILL included, so the next start takes over.
The other processes of the same job (DDP ranks, torchrun and SLURM ranks) do not take it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, SaveConfigCallback

from project.checkpoint_io import check_checkpoint
from project.errors import UserError
from project.files import atomic_write
from project.parser import located_class
from project.wandb_setup import log_checkpoints, name_wandb_run, wandb_run_id

# Lightning's DDP launcher re-runs the command in child processes that inherit the environment:
# rank 0 publishes its run directory here so every rank writes to the same one.
RUN_DIR_ENV = "PROJECT_RUN_DIR"
DEFAULT_RUNS_ROOT = "runs"
LOCK_FILE = ".lock"
# Lightning's names for `last` checkpoints (last.ckpt, last-v1.ckpt): what --ckpt_path last resolves to.
LAST_CHECKPOINT = re.compile(r"last(-v\d+)?\.ckpt")
_throwaway: set[Path] = set()  # fast_dev_run folders, removed when their command ends
_locks: dict[Path, int] = {}  # run directory -> the open lock file this process holds it with
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
    returns it and whether this run continues an earlier one there. Records the experiment's name in
    `config` (which is saved), so `--config runs/<run>/config.yaml` repeats the name too."""
    model_name = str(config.model.class_path).rsplit(".", 1)[-1].lower()
    config.experiment = experiment_name(config)
    parts = [*([config.experiment] if config.experiment else []), model_name]
    parts += [] if subcommand == "fit" else [subcommand]
    root = Path(config.trainer.default_root_dir or DEFAULT_RUNS_ROOT)
    resume: Resume = "never"
    if config.get("ckpt_path") == "last":
        resume = "last"
    elif config.resume == "auto":
        if config.get("ckpt_path") is not None:
            raise UserError("--resume auto picks the checkpoint itself: drop --ckpt_path, or drop --resume")
        resume = "auto"
    if config.trainer.get("fast_dev_run") and not os.environ.get(RUN_DIR_ENV):
        if resume != "never":
            raise UserError(
                "trainer.fast_dev_run keeps no run directory, so there is no run to resume: drop "
                "--resume auto / --ckpt_path last, or pass a checkpoint file as --ckpt_path"
            )
        # A smoke test: Lightning turns logging and checkpointing off, and the files our callbacks
        # and DataModules still write (config, split, metrics.json) go to a folder removed at the end.
        run_dir = Path(tempfile.mkdtemp(prefix="fast_dev_run-"))
        _throwaway.add(run_dir)
        os.environ[RUN_DIR_ENV] = str(run_dir)
        return run_dir, False
    run_dir, resuming = resolve_run_dir(root, config.run_name, parts, resume)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir, resuming


def experiment_name(config: Namespace) -> str | None:
    """--experiment, else the stem of the last --config file that chooses the model or the data
    (`configs/digits.yaml` -> digits; presets such as configs/debug/*.yaml and ddp.yaml choose neither)."""
    name = config.get("experiment")
    if name is None:
        for path in reversed(config.get("config") or []):
            try:
                content = yaml.safe_load(path.get_content())
            except (OSError, yaml.YAMLError):  # read once already by the parser: not expected
                continue
            if isinstance(content, dict) and ("model" in content or "data" in content):
                name = Path(str(path)).stem
                break
    return re.sub(r"[^\w.-]+", "_", name or "").strip("._") or None


def warn_about_callbacks(config: Namespace, subcommand: str, defaults_file: Path) -> None:
    """One warning line when the callbacks of `defaults_file` were replaced rather than added to
    (jsonargparse replaces a list given again; `callbacks+:` appends), and one when a fit keeps no
    checkpoint of its own."""
    if os.environ.get(RUN_DIR_ENV) or launcher_rank() != 0:
        return  # a DDP child or another rank: rank 0 said it
    given = [_class(str(spec.class_path)) for spec in _entries(config.trainer.callbacks)]
    defaults = yaml.safe_load(defaults_file.read_text()).get("trainer", {}).get("callbacks") or []
    dropped = [d["class_path"] for d in defaults if _class(d["class_path"]) not in given]
    if dropped:
        names = ", ".join(dict.fromkeys(path.rsplit(".", 1)[-1] for path in dropped))
        print(
            f"warning: trainer.callbacks replaces the default callbacks of {defaults_file.name}, dropping "
            f"{names}; to add callbacks to them write `callbacks+:` in the config (--trainer.callbacks+ on "
            "the command line)",
            file=sys.stderr,
        )
    if subcommand != "fit" or config.trainer.get("fast_dev_run"):
        return
    if any(isinstance(c, type) and issubclass(c, ModelCheckpoint) for c in given):
        return
    if config.trainer.get("enable_checkpointing") is False:
        print(
            "warning: trainer.enable_checkpointing is false: this fit saves no checkpoint, so "
            "--resume auto and --ckpt_path last cannot continue it",
            file=sys.stderr,
        )
    else:
        print(
            "warning: no ModelCheckpoint in trainer.callbacks: Lightning's fallback keeps only the latest "
            "epoch, in <run>/<first logger's name>/<version>/checkpoints, and no checkpoints/last.ckpt, "
            "so --resume auto and --ckpt_path last will not find it; add callbacks with `callbacks+:`",
            file=sys.stderr,
        )


def _class(class_path: str) -> Any:
    return located_class(class_path) or class_path  # unresolved: compared by its text


def run_summary(run_dir: Path) -> str:
    """The line a command ends with: where its outputs are."""
    if run_dir in _throwaway:
        return "fast_dev_run: nothing kept (no run directory, checkpoints or logs); drop it for a real run"
    return f"Run directory: {run_dir}"


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
            lock_run_dir(run_dir)
            return run_dir, True
        if resume == "auto":
            _make_dirs(run_dir, root)
            lock_run_dir(run_dir)  # before looking at its checkpoints: another job may be writing them
            return run_dir, (run_dir / "checkpoints" / "last.ckpt").is_file()
        if run_dir.exists():
            raise UserError(
                f"run directory {run_dir} already exists and is left untouched; choose another --run_name, "
                "or add --ckpt_path last (or --resume auto) to resume that run"
            )
        _make_dirs(run_dir, root)
        lock_run_dir(run_dir)
        return run_dir, False
    _make_dirs(root, root)
    default_name = timestamped_name(*parts)
    for attempt in range(1000):
        run_dir = root / (default_name if attempt == 0 else f"{default_name}-{attempt + 1}")
        try:
            run_dir.mkdir()  # atomic: two runs started in the same second get different folders
            lock_run_dir(run_dir)
            return run_dir, False
        except FileExistsError:
            continue
        except OSError as e:
            raise _unusable_root(root, e) from None
    raise UserError(f"could not create a new run directory under {root}")


def lock_run_dir(run_dir: Path) -> None:
    """Hold the run directory for this process until `release_run_dirs`, or refuse with one line
    naming the job that holds it. A POSIX record lock (fcntl): the OS drops it when the process ends,
    however it ends; forked workers (DataLoader) do not inherit it."""
    run_dir = run_dir.resolve()
    if run_dir in _locks:
        return
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):  # a file system without locks (some NFS setups)
                os.close(fd)
                print(f"warning: cannot lock {path} ({e.strerror}): a second job here would not be refused",
                      file=sys.stderr)  # fmt: skip
                return
            holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that has not yet written"
            os.close(fd)
            raise UserError(
                f"run directory {run_dir} is in use by another job ({holder}); wait for it to end or stop "
                "it: one job writes to a run directory at a time"
            ) from None
        try:  # a holder that was ending may have removed the file after we opened it: lock the one on disk
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {since}\n".encode())
    _locks[run_dir] = fd


def release_run_dirs() -> None:
    """Release the run directories this process holds; a lock file alone in its folder goes too."""
    for run_dir, fd in list(_locks.items()):
        with contextlib.suppress(OSError):  # the folder may be gone
            if holds_nothing_but_its_lock(run_dir):
                (run_dir / LOCK_FILE).unlink()
        os.close(fd)
        del _locks[run_dir]


def holds_nothing_but_its_lock(run_dir: Path) -> bool:
    """Whether a run directory holds nothing a run wrote: no file at all, or only its .lock."""
    return {path.name for path in run_dir.iterdir()} <= {LOCK_FILE}


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
    Trainer's root, relative `save_dir`/`dirpath` of loggers and callbacks, the W&B run (and its
    checkpoint uploads with --log_model), and with --resume auto or --ckpt_path last the checkpoint
    to continue from, checked."""
    config.trainer.default_root_dir = str(run_dir)
    loggers = _entries(config.trainer.logger)
    for spec in loggers + _entries(config.trainer.callbacks):
        for key in ("save_dir", "dirpath"):
            value = spec.init_args.get(key) if spec.get("init_args") is not None else None
            if value is not None and not Path(value).is_absolute():
                spec.init_args[key] = str(run_dir / value)
    # A job killed before its first checkpoint starts over, but into the W&B run it had begun: one
    # W&B run per run directory.
    name_wandb_run(
        loggers, run_dir, resuming or (config.resume == "auto" and wandb_run_id(run_dir) is not None)
    )
    log_checkpoints(loggers, config.log_model)
    if config.resume == "auto" and resuming:
        config.ckpt_path = str(intact_checkpoint(run_dir / "checkpoints" / "last.ckpt"))
    elif config.get("ckpt_path") == "last":
        # Lightning resolves `last` to the newest last*.ckpt in its ModelCheckpoints' folders: check
        # that file, so a broken one gets the same one line as when given by its path.
        folders = {Path(s.init_args.dirpath) for s in _entries(config.trainer.callbacks) if _dirpath(s)}
        found = [p for folder in folders for p in _files(folder) if LAST_CHECKPOINT.fullmatch(p.name)]
        if found:
            check_checkpoint(max(found, key=lambda p: p.stat().st_mtime))


def intact_checkpoint(last: Path) -> Path:
    """`last` if it is a complete checkpoint, else the newest complete one beside it, with a warning
    line: an unattended job (--resume auto) goes on from the state nearest to where it stopped."""
    try:
        check_checkpoint(last)
        return last
    except UserError as problem:
        others = sorted(_files(last.parent), key=lambda p: p.stat().st_mtime, reverse=True)
        for other in (p for p in others if p.suffix == ".ckpt" and p != last):
            try:
                check_checkpoint(other)
            except UserError:
                continue
            print(f"warning: {problem}; resuming from {other}, the newest intact checkpoint", file=sys.stderr)
            return other
        raise UserError(
            f"{problem}; there is no other intact checkpoint in {last.parent} to resume from"
        ) from None


def _dirpath(spec: Any) -> bool:
    init_args = spec.get("init_args")
    return (
        str(spec.class_path).endswith("ModelCheckpoint")
        and init_args is not None
        and bool(init_args.get("dirpath"))
    )


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


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
        if self.already_saved:
            return
        # The run directory whatever the loggers (trainer.log_dir: csv/version_0/ with a CSVLogger first).
        log_dir = Path(trainer.default_root_dir)
        if trainer.is_global_zero:
            if (log_dir / self.config_filename).exists():
                name = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum ("fit")
                n = 2
                while (log_dir / f"config.{name}.{n}.yaml").exists():
                    n += 1
                self.config_filename = f"config.{name}.{n}.yaml"
            # Whole or not at all, as every file of a run (project/files.py), with the umask's mode.
            with atomic_write(log_dir / self.config_filename) as f:
                f.write(self.parser.dump(self.config, skip_none=False))
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

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
        release_run_dirs()
        if run_dir and Path(run_dir) in _throwaway:
            shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir and Path(run_dir).is_dir() and not any(Path(run_dir).iterdir()):
            Path(run_dir).rmdir()


def timestamped_name(*parts: str) -> str:
    return "-".join([time.strftime("%Y%m%d-%H%M%S"), *parts])
