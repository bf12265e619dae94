"""Sub-modules initialized from an earlier run's checkpoint, optionally frozen.

    model:
      init_args:
        pretrained:
          - {module: encoder, run: runs/20261123-171502-autoencoderclassifier, checkpoint: best, freeze: true}

`module` is the attribute of this model to fill; `source` (default: the same name) is the module in
the checkpoint it comes from. `checkpoint` picks the file in `<run>/checkpoints/`: "last" (default),
"best", or an epoch number (a file `*epoch<NNN>*.ckpt`, as ModelCheckpoint names them). With
`freeze: true` (default) the module gets no gradients, stays in eval mode (BatchNorm statistics and
dropout frozen too) and is left out of the optimizer.

BaseModel loads them when `fit` starts: a resumed run or `load_from_checkpoint` takes every weight
from its own checkpoint and never needs the earlier run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NotRequired, TypedDict

import torch
from torch import nn

from project.checkpoint_io import check_checkpoint
from project.errors import UserError


class PretrainedConfig(TypedDict):
    module: str
    run: str
    checkpoint: NotRequired[str | int]
    source: NotRequired[str]
    freeze: NotRequired[bool]


def checkpoint_file(run: Path, which: str | int) -> Path:
    """The checkpoint of `run` that `which` ("last", "best" or an epoch number) names."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        raise UserError(
            f"pretrained: {run} has no checkpoints/ folder; give the run directory of an earlier fit"
        )
    available = sorted(p.name for p in folder.glob("*.ckpt"))
    if which == "last":
        candidates = [folder / "last.ckpt"]
    elif which == "best":
        candidates = sorted(folder.glob("best-*.ckpt"))
    elif isinstance(which, int) or str(which).isdigit():
        candidates = sorted(folder.glob(f"*epoch{int(which):03d}*.ckpt"))
    else:
        raise UserError(f"pretrained: checkpoint {which!r} must be 'last', 'best' or an epoch number")
    candidates = [c for c in candidates if c.is_file()]
    if len(candidates) != 1:
        found = "none" if not candidates else f"{len(candidates)}"
        raise UserError(f"pretrained: checkpoint {which!r} of {run}: {found} found among {available}")
    return candidates[0]


def load_pretrained(model: nn.Module, config: PretrainedConfig) -> nn.Module:
    """Fill `model.<module>` from the checkpoint `config` names and freeze it if asked; returns it."""
    name = config["module"]
    target = model.get_submodule(name) if name else model
    path = checkpoint_file(Path(config["run"]), config.get("checkpoint", "last"))
    try:
        check_checkpoint(path)
    except UserError as e:  # say which setting named the file
        raise UserError(f"pretrained: {e}") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # objects the safe loader refuses: never loaded here
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"pretrained: {path} holds objects the safe loader refuses ({reason})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"pretrained: {path} is not a Lightning checkpoint (it has no state_dict)")
    prefix = f"{config.get('source', name)}."
    weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not weights:
        modules = sorted({key.split(".", 1)[0] for key in state})
        raise UserError(f"pretrained: {path} has no module {prefix[:-1]!r}; its modules are {modules}")
    try:
        target.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise UserError(
            f"pretrained: {prefix[:-1]} in {path} does not fit this model's {name}: {first[0].strip()}"
        ) from None
    if config.get("freeze", True):
        target.requires_grad_(False)
        target.eval()
    return target
