"""Checkpoint files: written atomically, checked before they are read.

`AtomicCheckpointIO` (set in configs/defaults.yaml under `trainer.plugins`) writes each checkpoint
to a temporary file beside its target, flushes it to disk, and renames it over the target. A rename
within one folder is atomic, so a run killed mid-save leaves the previous `last.ckpt` intact.
Lightning's own writer stages the file in the system temp folder, and moving it from there is a
copy, not a rename, when that folder is on another disk.

`check_checkpoint(path)` fails with one clear message for a missing, truncated or corrupt file,
before Lightning would fail with a traceback. `check_ckpt_path` checks a command's --ckpt_path
further: that it refers to something, that the safe loader reads it, that it holds the model
class the config builds, and that its hyper-parameters name no code outside the allowed namespaces
(`check_hyperparameters`, also for `load_from_checkpoint`: `check_checkpoint_hyperparameters`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from project.errors import UserError, found_behind
from project.files import atomic_write
from project.terms import DOTTED, PACKAGE, inside


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
        try:
            with atomic_write(target, "wb") as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as e:
            # A full disk, a quota, a vanished network mount. torch.save reports some write errors as a
            # RuntimeError whose context is the OSError. The earlier files are whole either way.
            cause = found_behind(e, (OSError,))
            if not isinstance(cause, OSError):
                raise
            raise UserError(
                f"could not save checkpoint {target}: {cause.strerror or cause}. The checkpoints saved "
                f"before it are intact; free space (or fix the folder) and resume with --resume auto"
            ) from None


def check_ckpt_path(ckpt_path: str, *, weights_only: bool, model_class: str | None) -> None:
    """Raise a UserError unless a command can start from `--ckpt_path ckpt_path`: a complete
    checkpoint file that loads (with torch's safe loader unless `weights_only` is False) and holds a
    `model_class` (when both name one), or `last` (a resume) or a Lightning model registry name."""
    if ckpt_path == "last" or ckpt_path.lower() == "registry" or ckpt_path.lower().startswith("registry:"):
        if weights_only and Path(ckpt_path).is_file():  # LightningCLI merges the hparams of a file so named
            check_checkpoint_hyperparameters(ckpt_path)
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
    hyper_parameters = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    hyper_parameters = hyper_parameters if isinstance(hyper_parameters, dict) else {}
    if weights_only:  # what LightningCLI then merges into the config (with --weights_only false it does not)
        check_hyperparameters(hyper_parameters, f"checkpoint {path}", model_class)
    saved = hyper_parameters.get("_class_path")
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


# Lightning's own allowlist of the `_instantiator` a checkpoint may name (core/saving.py).
INSTANTIATORS = ("pytorch_lightning.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module")
# Where a class_path in a model's hyper-parameters may point, by argument (any other: CLASS_NAMESPACES).
OPTIMIZER_NAMESPACES = ("torch.optim", PACKAGE)
SCHEDULER_NAMESPACES = ("torch.optim.lr_scheduler", PACKAGE)
CLASS_NAMESPACES = ("torch.nn", "torch.optim", "torchmetrics", PACKAGE)


def check_hyperparameters(hparams: Any, source: str, model_class: str | None = None) -> None:
    """Raise a UserError unless every class or function a model's saved hyper-parameters name lies
    inside the allowed namespaces and is of the kind it is used as, checked before LightningCLI or
    jsonargparse import or call any of it. The model class (`_class_path`) is in this project's
    package; the optimizer a `torch.optim.Optimizer` class and the scheduler an `LRScheduler` class
    (in torch.optim or this package); any other `class_path` a class in torch.nn, torch.optim,
    torchmetrics or this package; each `losses`/`metrics` `fn` what model/losses.py and
    metrics/configured.py accept. jsonargparse would otherwise import any module a path names (its
    import may have effects) and call a function given as a `class_path` with its `init_args`.
    `model_class` is the class the caller builds anyway (the config's model, or the class whose
    `load_from_checkpoint` runs): a checkpoint naming exactly that one may lie outside this package."""
    from pytorch_lightning import LightningModule
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    from project.metrics.configured import resolve_metric
    from project.model.losses import resolve_loss

    if not isinstance(hparams, dict):
        return
    saved = hparams.get("_instantiator")
    if saved is not None and saved not in INSTANTIATORS:
        raise UserError(f"{source}: its _instantiator {saved!r} is not Lightning's; refused, nothing was run")
    if "_class_path" in hparams and hparams["_class_path"] != model_class:
        check_class(hparams["_class_path"], (PACKAGE,), LightningModule, f"{source}: model class")
    for name, namespaces, base in [
        ("optimizer", OPTIMIZER_NAMESPACES, Optimizer),
        ("scheduler", SCHEDULER_NAMESPACES, LRScheduler),
    ]:
        spec = hparams.get(name)
        path = spec.get("class_path") if isinstance(spec, dict) else spec
        if path is not None:
            check_class(path, namespaces, base, f"{source}: model.init_args.{name}")
    for name, noun, resolve in [("losses", "loss", resolve_loss), ("metrics", "metric", resolve_metric)]:
        for term in hparams.get(name) or []:
            if isinstance(term, dict):
                resolve(term.get("fn"), f"{source}: {noun} {term.get('name')!r}")
    # Any other class_path, nested anywhere (the optimizer's and scheduler's init_args included).
    others = {k: v for k, v in hparams.items() if k != "_class_path"}
    for name in ("optimizer", "scheduler"):
        spec = others.pop(name, None)
        if isinstance(spec, dict):
            others[name] = {k: v for k, v in spec.items() if k != "class_path"}
    for where, path in _class_paths(others, "model.init_args"):
        check_class(path, CLASS_NAMESPACES, object, f"{source}: {where}")


def check_checkpoint_hyperparameters(path: str | os.PathLike[str], model_class: str | None = None) -> None:
    """`check_hyperparameters` of the checkpoint file at `path`, read with the safe loader: what
    `BaseModel.load_from_checkpoint` calls before Lightning rebuilds the model from them."""
    check_checkpoint(Path(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return  # Lightning's own loader refuses it the same way, before any hyper-parameter is used
    if isinstance(checkpoint, dict):
        check_hyperparameters(checkpoint.get("hyper_parameters"), f"checkpoint {path}", model_class)


def _class_paths(value: Any, where: str) -> list[tuple[str, Any]]:
    """Every `class_path` value inside nested dicts and lists, with where it is."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        if "class_path" in value:
            found.append((where, value["class_path"]))
        for key, inner in value.items():
            found += _class_paths(inner, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            found += _class_paths(inner, f"{where}[{i}]")
    return found


def check_class(path: Any, namespaces: tuple[str, ...], base: type, what: str) -> None:
    """A UserError unless `path` is a dotted path inside `namespaces` (checked before any import)
    naming a subclass of `base` defined there (checked before anything calls it)."""
    refused = f"{what} {path!r} is refused, and nothing was imported or run"
    if not isinstance(path, str) or not DOTTED.fullmatch(path) or not inside(path, namespaces):
        raise UserError(f"{refused}: only a class inside {', '.join(namespaces)} is allowed")
    module, _, attribute = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        raise UserError(
            f"{what} {path!r} cannot be imported; the checkpoint does not fit this code"
        ) from None
    home = getattr(found, "__module__", None)
    if not (
        isinstance(found, type)
        and issubclass(found, base)
        and isinstance(home, str)
        and inside(home, namespaces)
    ):
        raise UserError(
            f"{what} {path!r} is not a {base.__name__} class inside {', '.join(namespaces)}; refused"
        )
