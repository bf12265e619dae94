"""Weights & Biases, set up once per command: its mode, the run's name and id, and closing the run.

`python -m project` logs offline by default (no account, no server). With WANDB_MODE=online but no
way to reach the server (no network, or no API key), W&B would retry for minutes or wait for a
login. Instead, the run falls back to offline with a warning saying how to upload it later.

The W&B run is named after the run directory, and a resumed run logs into the W&B run it started
(same id) rather than a second one. Each command closes its W&B run when it ends.

This module imports nothing heavy at its top: `python -m project` calls `import_wandb_early` before
torch is imported (see there).
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from project.errors import UserError

if TYPE_CHECKING:
    from pytorch_lightning.loggers import Logger

CONNECT_TIMEOUT_S = 5.0
DEFAULT_SERVER = "https://api.wandb.ai"


def _server_reachable(url: str) -> bool:
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def choose_wandb_mode() -> str:
    """Set WANDB_MODE for this process (default offline) and return it."""
    mode = os.environ.setdefault("WANDB_MODE", "offline")
    if mode not in ("online", "run"):
        return mode
    server = os.environ.get("WANDB_BASE_URL", DEFAULT_SERVER)
    problem = None
    if not _has_api_key():
        problem = "no API key (WANDB_API_KEY or `wandb login`)"
    elif not _server_reachable(server):
        problem = f"{server} cannot be reached within {CONNECT_TIMEOUT_S:.0f} s"
    if problem is None:
        return mode
    os.environ["WANDB_MODE"] = "offline"
    print(
        f"warning: WANDB_MODE={mode} but {problem}: logging offline instead. "
        f"Upload later with: wandb sync runs/<run>/wandb/offline-run-*",
        file=sys.stderr,
    )
    return "offline"


# W&B keeps each part of a run in a folder `[offline-]run-<date>_<time>-<id>`, with `-<n>` added when
# two parts start in the same second.
RUN_FOLDER = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-(?P<id>.+?)(?:-\d+)?")


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run already in `run_dir` (read from its newest folder's name), so a resumed
    run continues it instead of starting another."""
    runs = sorted((run_dir / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime)
    found = [match["id"] for path in runs if (match := RUN_FOLDER.fullmatch(path.name))]
    return found[-1] if found else None


def name_wandb_run(logger_specs: list[Any], run_dir: Path, resuming: bool) -> None:
    """Fill in the name (the run directory's) and, on a resume, the id of every WandbLogger config
    entry that does not set them, before the loggers are built; keep W&B's staged files in the run."""
    for spec in logger_specs:
        if not str(spec.class_path).endswith("WandbLogger"):
            continue
        keep_staged_files_in(run_dir / "wandb")
        if spec.init_args.get("name") is None:
            spec.init_args["name"] = run_dir.name
        if resuming and spec.init_args.get("id") is None:
            spec.init_args["id"] = wandb_run_id(run_dir)


def log_checkpoints(logger_specs: list[Any], log_model: bool | str) -> None:
    """`--log_model`: hand the value to every WandbLogger of the config (Lightning's WandbLogger
    uploads the ModelCheckpoints' files as `model-<run id>` artifacts, aliased best and latest).
    Refused, in one line, where no W&B run would take them."""
    if not log_model:
        return
    specs = [spec for spec in logger_specs if str(spec.class_path).endswith("WandbLogger")]
    if os.environ.get("WANDB_MODE") == "disabled" or not specs:
        why = "WANDB_MODE=disabled" if specs else "trainer.logger has no WandbLogger"
        raise UserError(
            f"log_model={log_model} uploads checkpoints to W&B, but {why}: drop --log_model, or log to W&B "
            "(offline is fine: `wandb sync` uploads them later)"
        )
    for spec in specs:
        spec.init_args["log_model"] = log_model


_data_dir_set_here: str | None = None


def keep_staged_files_in(folder: Path) -> None:
    """W&B copies every logged table and image into `$WANDB_DATA_DIR/artifacts/staging` (default
    ~/.local/share/wandb), where an offline run leaves them for good: ~50 files a fit. Unless the
    user chose that folder, it is the run's own, beside the run `wandb sync` uploads them with."""
    global _data_dir_set_here
    if os.environ.get("WANDB_DATA_DIR") in (None, _data_dir_set_here):
        _data_dir_set_here = os.environ["WANDB_DATA_DIR"] = str(folder.resolve())


def drop_anonymous_setting(loggers: list[Logger]) -> None:
    """Lightning's WandbLogger passes `anonymous` to wandb.init even when it is unset (as None), and
    wandb, which dropped anonymous mode, then warns on every run that the setting has no effect.
    Lightning keeps wandb.init's arguments in `_wandb_init`, read only when the run starts."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger._wandb_init.pop("anonymous", None)


@contextmanager
def closing_wandb_run() -> Iterator[None]:
    """Close the W&B run a command started when it ends: Lightning's WandbLogger would otherwise reuse
    a still-open run in the next command of the same process (a notebook, a test session)."""
    try:
        yield
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()


# wandb.init imports this module. Its pydantic models look up their fields' docstrings by walking the
# stack with inspect.getmodule, which scans every loaded module for each frame of the frozen import
# machinery (wandb issue 10898): with torch and Lightning loaded (~4 000 modules) that import takes
# ~0.4-1 s, before them ~0.1 s. On a 1-epoch digits fit, importing it first made the whole process
# ~1 s faster (5 ABBA quads on 2 CPU cores, 2026-12-04: 4 faster, one even).
WANDB_INIT_IMPORTS = "wandb.sdk.launch.inputs.internal"
RUN_COMMANDS = ("fit", "validate", "test", "predict")  # LightningCLI's: each starts a W&B run


def import_wandb_early(argv: list[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Import what wandb.init will, before torch, for a command that starts a W&B run: `python -m
    project` (the default demo) or one of RUN_COMMANDS, on the process that logs (global rank 0), not
    asking for help, W&B not disabled. Returns whether it did: not without wandb installed, or if its
    module moved. A config without a WandbLogger pays ~0.5 s for nothing; every config here logs to W&B."""
    command = argv[0] if argv else "fit"
    asks_only = any(arg in ("-h", "--help") or arg.startswith("--print_config") for arg in argv)
    ranked = any(environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))
    if command not in RUN_COMMANDS or asks_only or ranked or environ.get("WANDB_MODE") == "disabled":
        return False
    try:
        importlib.import_module(WANDB_INIT_IMPORTS)
    except ImportError:  # only a speed-up: the command itself says what is missing, if it needs it
        return False
    return True
