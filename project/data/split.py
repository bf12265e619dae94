"""Seeded train/val splits, saved as JSON so a later run can reuse exactly the same partition.

split = Split.random(num_samples=50_000, val_fraction=0.1, seed=42)
split = Split.kfold(labels, folds=5, fold=2, seed=42)   # fold 2 of 5 stratified folds is the val split
split.save(run_dir / "split.json")
same = Split.load(run_dir / "split.json", num_samples=50_000)   # checked against the dataset
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from project.errors import UserError
from project.files import atomic_write


@dataclass(frozen=True)
class Split:
    num_samples: int
    train: list[int]
    val: list[int]
    seed: int | None = None
    val_fraction: float | None = None
    folds: int | None = None  # a k-fold split: `val` is fold `fold` of `folds`, `train` the others
    fold: int | None = None

    @classmethod
    def random(cls, num_samples: int, val_fraction: float, seed: int) -> Split:
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        num_val = max(1, round(num_samples * val_fraction))
        if num_val >= num_samples:
            raise UserError(f"val_fraction={val_fraction} leaves no training samples out of {num_samples}")
        # A generator of our own: the split depends on `seed` alone, not on the global RNG state.
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed)).tolist()
        return cls(num_samples, sorted(order[num_val:]), sorted(order[:num_val]), seed, val_fraction)

    @classmethod
    def kfold(cls, labels: Sequence[int] | torch.Tensor, folds: int, fold: int, seed: int) -> Split:
        """Fold `fold` of `folds` stratified folds of the samples with these labels as val, the rest as
        train. The folds never overlap, cover every sample, and hold each class's samples as evenly as
        they can (counts differ by at most one), as do their sizes; they depend on `seed` alone."""
        check_fold(folds, fold)
        label = torch.as_tensor(labels, dtype=torch.long)
        if len(label) < folds:
            raise UserError(f"data.init_args.folds={folds} is more than the {len(label)} samples of the pool")
        classes, counts = torch.unique(label, return_counts=True)
        if int(counts.min()) < folds:
            rarest, few = int(classes[counts.argmin()]), int(counts.min())
            raise UserError(
                f"data.init_args.folds={folds} is more than the {few} samples of class {rarest} in the pool: "
                f"stratified folds need every class in every fold; use folds <= {few}"
            )
        # scikit-learn's StratifiedKFold would do the same, but importing it costs every fold's process 2-3 s.
        # A random order, then grouped by class (a stable sort keeps it random within each class), dealt
        # round-robin: each class's run of samples spreads over the folds evenly, and so does the whole.
        order = torch.randperm(len(label), generator=torch.Generator().manual_seed(seed))
        order = order[label[order].argsort(stable=True)]
        in_fold = torch.arange(len(order)) % folds == fold
        train, val = sorted(order[~in_fold].tolist()), sorted(order[in_fold].tolist())
        return cls(len(label), train, val, seed=seed, folds=folds, fold=fold)

    def save(self, path: Path) -> None:
        """Write atomically. An existing file is kept if identical; a different one is never overwritten."""
        path = Path(path)
        if path.exists():
            try:
                same = Split.load(path, self.num_samples) == self
            except UserError:  # made for another dataset, or not a split at all
                same = False
            if same:
                return
            raise UserError(
                f"{path} already holds a different split; it is left as it is. Use a new run directory."
            )
        with atomic_write(path) as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, path: Path, num_samples: int) -> Split:
        """Read a saved split and check it fits a dataset of `num_samples`."""
        path = Path(path)
        if path.is_dir():
            raise UserError(f"split_file {path} is a folder; pass the split.json file of an earlier run")
        if not path.is_file():
            raise UserError(f"split_file {path} does not exist; pass the split.json of an earlier run")
        try:
            raw = json.loads(path.read_text())
            split = cls(
                num_samples=int(raw["num_samples"]),
                train=[int(i) for i in raw["train"]],
                val=[int(i) for i in raw["val"]],
                seed=raw.get("seed"),
                val_fraction=raw.get("val_fraction"),
                folds=raw.get("folds"),
                fold=raw.get("fold"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"split_file {path} is not a split written by this project ({e!r})") from None
        if split.num_samples != num_samples:
            raise UserError(
                f"split_file {path} was made for a dataset of {split.num_samples} samples, but this dataset "
                f"has {num_samples}; drop split_file to make a new split for it"
            )
        indices = split.train + split.val
        if len(set(indices)) != len(indices) or not all(0 <= i < num_samples for i in indices):
            raise UserError(
                f"split_file {path} has repeated or out-of-range indices (dataset size {num_samples})"
            )
        return split


def check_fold(folds: int | None, fold: int | None) -> None:
    """That `folds` and `fold` (data.init_args) name one fold of a k-fold split, or are both unset."""
    if folds is None and fold is None:
        return
    if folds is None:
        raise UserError(
            f"data.init_args.fold={fold} needs data.init_args.folds, how many folds the pool is split into"
        )
    if folds < 2:
        raise UserError(f"data.init_args.folds={folds}: k-fold cross-validation needs at least 2 folds")
    if fold is None:
        raise UserError(
            f"data.init_args.folds={folds} needs data.init_args.fold, which fold (0..{folds - 1}) is the "
            f"validation split; `python -m project cv --folds {folds}` trains every fold"
        )
    if not 0 <= fold < folds:
        raise UserError(f"data.init_args.fold={fold} is not one of the {folds} folds: use 0..{folds - 1}")
