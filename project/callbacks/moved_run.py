"""`MovedRunDir`: a run directory moved or copied elsewhere (another disk, another machine) resumes
there as if it had never moved.

Each ModelCheckpoint keeps absolute paths in the checkpoint: its folder, the best and last files, the
top-k files with their scores. Resumed from a folder with another path, Lightning forgets all but
the best file's (old) path: the best score starts over, a worse epoch is saved as the new best beside
the real one, and `save_last` moves on to `last-v1.ckpt`. When the checkpoint being resumed lies in
a ModelCheckpoint's own folder, its remembered paths are rewritten from the old folder to that one
before Lightning reads them. A checkpoint from another run (--ckpt_path elsewhere/last.ckpt) is left
as Lightning treats it: that run's files stay where they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class MovedRunDir(pl.Callback):
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls every callback's on_load_checkpoint before any load_state_dict.
        if not trainer.ckpt_path or not os.path.isfile(trainer.ckpt_path):
            return
        resumed_from = Path(trainer.ckpt_path).resolve().parent
        states = checkpoint.get("callbacks") or {}
        for callback in trainer.checkpoint_callbacks:
            state = states.get(callback.state_key)
            if not isinstance(callback, ModelCheckpoint) or not callback.dirpath or not state:
                continue
            old, new = str(state.get("dirpath") or ""), str(callback.dirpath)
            if old and old != new and Path(new).resolve() == resumed_from:
                relocate(state, old, new)


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
