"""`RunMetadata`: what produced a run, recorded in its directory and in its W&B config.

Each command that runs in a run directory (a fit, its resume, a later test) adds one entry to
`metadata.json`, so a resumed run keeps what its first segment recorded:

    {"segments": [{"started": "...", "command": "python -m project fit --config configs/digits.yaml",
      "cwd": "...", "git": {"commit": "3f2a...", "dirty": true, "diff": "git-1.diff", "untracked": [...]},
      "versions": {"python": "3.11.7", "torch": "2.14.1", "cuda": null, "pytorch_lightning": "2.6.6", ...},
      "machine": {"host": "...", "platform": "...", "cpu": "...", "cpus": 2, "gpus": []},
      "packages": ["numpy==2.3.4", ...]}]}

`git` describes the checkout holding the code that ran (the package's own folder, wherever the command
was started): its commit, whether tracked files differ from it (the difference itself is saved as
`git-<segment>.diff`, which `git apply` replays on that commit) and the untracked files. Code installed
outside a git checkout, or a machine without git, is said so in `git.error`; the run goes on.
`packages` is what `pip freeze` lists (read from the installed distributions, no subprocess).

Every entry but the diff also goes to each W&B run's config under `run_metadata` (rank 0 only).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from packaging.utils import canonicalize_name
from pytorch_lightning.loggers import WandbLogger

from project.files import atomic_write

FILENAME = "metadata.json"
GIT_TIMEOUT_S = 10
VERSIONS = ("pytorch_lightning", "lightning_fabric", "torchmetrics", "torchvision", "jsonargparse", "wandb")


class RunMetadata(pl.Callback):
    """Records the commit, command, versions, packages and machine of each command run in a run directory."""

    def __init__(self, source: str | None = None) -> None:
        """
        Args:
            source: a folder inside the git checkout to describe; None: the folder of this package.
        """
        self.source = Path(source) if source is not None else Path(__file__).resolve().parent.parent
        self._recorded = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._recorded or not trainer.is_global_zero:  # once per command (fit's test after it: no)
            return
        self._recorded = True
        root = Path(trainer.default_root_dir)
        path = root / FILENAME
        segments = _read(path)
        number = len(segments) + 1
        entry = collect(self.source)
        diff = entry["git"].pop("diff_text", None)
        if diff:
            entry["git"]["diff"] = f"git-{number}.diff"
            with atomic_write(root / entry["git"]["diff"]) as f:
                f.write(diff)
        with atomic_write(path) as f:
            f.write(json.dumps({"segments": [*segments, entry]}, indent=1) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"run_metadata": entry}, allow_val_change=True)


def collect(source: Path) -> dict[str, Any]:
    """Everything an entry of metadata.json holds; the git diff, if any, under git.diff_text."""
    installed = installed_versions()
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(_command()),
        "cwd": os.getcwd(),
        "git": git_state(source),
        "versions": versions(installed),
        "machine": machine(),
        "packages": [f"{name}=={version}" for name, version in installed.values()],
    }


def _command() -> list[str]:
    """The command as typed: `python -m project fit ...` (sys.orig_argv keeps the -m)."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    argv[0] = Path(argv[0]).name
    return argv


def git_state(source: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "git failed")
        return done.stdout

    try:
        top = git("rev-parse", "--show-toplevel").strip()
    except FileNotFoundError:
        return {"error": "git is not installed: the code's version is not recorded"}
    except (RuntimeError, subprocess.TimeoutExpired):
        return {"error": f"not a git checkout: {source} (the code's version is not recorded)"}
    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=all").splitlines()
        diff = git("diff", "HEAD", "--binary")
    except (RuntimeError, subprocess.TimeoutExpired) as error:  # e.g. a new repository without a commit
        return {"checkout": top, "error": f"git could not describe {top}: {error}"}
    untracked = [line[3:] for line in status if line.startswith("??")]
    state: dict[str, Any] = {"checkout": top, "commit": commit, "dirty": bool(diff), "untracked": untracked}
    if diff:
        state["diff_text"] = diff
    return state


def versions(installed: dict[str, tuple[str, str]]) -> dict[str, str | None]:
    """Python's, torch's and CUDA's, and the installed versions of VERSIONS (`installed_versions()`)."""
    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
    }
    for name in VERSIONS:
        _, found[name] = installed.get(canonicalize_name(name), (name, None))
    return found


def machine() -> dict[str, Any]:
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "gpus": gpus,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def installed_versions() -> dict[str, tuple[str, str]]:
    """`pip freeze`'s list as {PEP 503 name: (name, version)}, sorted by name: every installed
    distribution's metadata read once (~0.05 s; each `metadata.version()` would search them all again).
    A name installed twice is the one found first on sys.path, as `import` and `metadata.version` do."""
    found: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        headers = dist.metadata
        if headers["Name"]:
            found.setdefault(canonicalize_name(headers["Name"]), (headers["Name"], headers["Version"]))
    return dict(sorted(found.items()))


def _read(path: Path) -> list[dict[str, Any]]:
    """The entries so far. A file that cannot be read is set aside (renamed), never overwritten."""
    try:
        return list(json.loads(path.read_text())["segments"])
    except FileNotFoundError:  # the first command in this run directory
        return []
    except (OSError, ValueError, KeyError, TypeError):
        path.rename(path.with_suffix(".unreadable.json"))
        return []
