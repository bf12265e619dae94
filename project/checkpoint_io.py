"""Checkpoint files: written atomically, checked before they are read.

`AtomicCheckpointIO` (set in configs/defaults.yaml under `trainer.plugins`) writes each checkpoint
to a temporary file beside its target, flushes it to disk, and renames it over the target. A rename
within one folder is atomic, so a run killed mid-save leaves the previous `last.ckpt` intact.
Lightning's own writer stages the file in the system temp folder, and moving it from there is a
copy, not a rename, when that folder is on another disk.

`check_checkpoint(path)` fails with one clear message for a missing, truncated or corrupt file,
before Lightning would fail with a traceback. `check_ckpt_path` checks a command's --ckpt_path
further: that it refers to something, that the safe loader reads it, and that it holds the model
class the config builds.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from project.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A save killed midway leaves its temp file behind: a whole checkpoint's worth of disk. Only
        # one process writes a given checkpoint, so any such leftover is stale.
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def check_ckpt_path(ckpt_path: str, *, weights_only: bool, model_class: str | None) -> None:
    """Raise a UserError unless a command can start from `--ckpt_path ckpt_path`: a complete
    checkpoint file that loads (with torch's safe loader unless `weights_only` is False) and holds a
    `model_class` (when both name one), or `last` (a resume) or a Lightning model registry name."""
    if ckpt_path == "last" or ckpt_path.lower() == "registry" or ckpt_path.lower().startswith("registry:"):
        return
    if ckpt_path in ("best", "hpc"):
        raise UserError(
            f"--ckpt_path {ckpt_path} looks for a checkpoint in the run's own directory, and every command "
            "starts a new one: pass a checkpoint file (runs/<run>/checkpoints/*.ckpt), or continue a run "
            "with --run_name NAME --ckpt_path last"
        )
    path = Path(ckpt_path)
    check_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(
            f"checkpoint {path} holds objects the safe loader refuses to unpickle ({reason}). "
            f"Only if you trust where it came from, load it anyway with --weights_only false"
        ) from None
    saved = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if saved and model_class and saved != model_class:
        raise UserError(
            f"checkpoint {path} holds a {saved}, but the config builds a {model_class}: use the config it "
            f"was trained with (its run's config.yaml), or --model {saved}"
        )


def check_checkpoint(path: Path) -> None:
    """Raise a UserError naming `path` unless it is a complete checkpoint file (a zip whose every
    member matches its checksum, as torch.save writes them)."""
    if path.is_dir():
        inside = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        example = f", e.g. {inside[-1]}" if inside else ""
        raise UserError(f"checkpoint {path} is a folder: pass a checkpoint file{example}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(
            f"checkpoint {path} is truncated or not a checkpoint ({e}); use another one, e.g. the "
            f"run's checkpoints/last.ckpt or a best-epoch*.ckpt"
        ) from None
    if broken is not None:
        raise UserError(f"checkpoint {path} is corrupt (entry {broken} fails its checksum); use another one")
