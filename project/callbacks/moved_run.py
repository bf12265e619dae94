"""`MovedRunDir`: a run directory moved or copied elsewhere (another disk, another machine) resumes
there as if it had never moved.

Each ModelCheckpoint keeps absolute paths in the checkpoint: its folder, the best and last files, the
top-k files with their scores. Resumed from a folder with another path, Lightning forgets all but
the best file's (old) path: the best score starts over, a worse epoch is saved as the new best beside
the real one, and `save_last` moves on to `last-v1.ckpt`. When the checkpoint being resumed lies in
a ModelCheckpoint's own folder, its remembered paths are rewritten from the old folder to that one
before Lightning reads them. A checkpoint from another run (--ckpt_path elsewhere/last.ckpt) is left
as Lightning treats it: that run's files stay where they are.

Those remembered paths are also what Lightning deletes when a better checkpoint replaces a top-k one,
and a checkpoint is data from a file: any path that does not resolve into the ModelCheckpoint's own
folder (`checkpoints/../../elsewhere`, a symlink out) is dropped before Lightning reads it, so a
crafted checkpoint cannot make a resumed run delete files outside its run directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class MovedRunDir(pl.Callback):
    """Lets a run directory moved or copied elsewhere resume there with its best and last checkpoints."""

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls every callback's on_load_checkpoint before any load_state_dict.
        if not trainer.ckpt_path or not os.path.isfile(trainer.ckpt_path):
            return
        resumed_from = Path(trainer.ckpt_path).resolve().parent
        states = checkpoint.get("callbacks") or {}
        if not isinstance(states, dict):
            return
        for callback in trainer.checkpoint_callbacks:
            state = states.get(callback.state_key)
            if not isinstance(callback, ModelCheckpoint) or not callback.dirpath or not state:
                continue
            old, new = str(state.get("dirpath") or ""), str(callback.dirpath)
            if old and old != new and Path(new).resolve() == resumed_from:
                relocate(state, old, new)
            keep_inside(state, new)


def relocate(state: dict[str, Any], old: str, new: str) -> None:
    """Rewrite the paths under folder `old` in a ModelCheckpoint state to lie under `new`."""

    def moved(path: Any) -> Any:
        if isinstance(path, str) and path.startswith(old.rstrip(os.sep) + os.sep):
            return new.rstrip(os.sep) + path[len(old.rstrip(os.sep)) :]
        return path

    for key in PATH_KEYS:
        if key in state:
            state[key] = moved(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {moved(path): score for path, score in state["best_k_models"].items()}
    state["dirpath"] = new


def keep_inside(state: dict[str, Any], folder: str) -> None:
    """Drop the paths of a ModelCheckpoint state that do not resolve to a file inside `folder`."""
    root = os.path.realpath(folder)

    def inside(path: Any) -> bool:
        if not isinstance(path, str) or not path:
            return False
        real = os.path.realpath(path)
        return real != root and os.path.commonpath([root, real]) == root

    for key in PATH_KEYS:
        if key in state and not inside(state[key]):
            state[key] = ""
    if "best_k_models" in state:
        models = state["best_k_models"] if isinstance(state["best_k_models"], dict) else {}
        state["best_k_models"] = {path: score for path, score in models.items() if inside(path)}
