"""Seeded train/val splits: deterministic, saved, reused exactly, and checked when reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from project.data import Split
from project.errors import UserError


def test_split_is_seeded_disjoint_and_complete() -> None:
    a = Split.random(100, val_fraction=0.2, seed=1)
    assert a == Split.random(100, val_fraction=0.2, seed=1)
    assert a != Split.random(100, val_fraction=0.2, seed=2)
    assert len(a.val) == 20 and len(a.train) == 80
    assert sorted(a.train + a.val) == list(range(100))


def test_save_then_load_gives_identical_indices(tmp_path: Path) -> None:
    split = Split.random(50, val_fraction=0.1, seed=3)
    path = tmp_path / "split.json"
    split.save(path)
    assert Split.load(path, num_samples=50) == split
    split.save(path)  # saving the same split again is a no-op


def test_a_different_split_never_overwrites_a_saved_one(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    Split.random(50, val_fraction=0.1, seed=3).save(path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="already holds a different split"):
        Split.random(50, val_fraction=0.1, seed=4).save(path)
    with pytest.raises(UserError, match="already holds a different split"):  # another dataset's split
        Split.random(80, val_fraction=0.1, seed=3).save(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("not json", "not a split written by this project"),
        ({"num_samples": 10, "train": [0, 1], "val": [1]}, "repeated or out-of-range"),
        ({"num_samples": 10, "train": [0, 11], "val": [1]}, "repeated or out-of-range"),
        (
            {"num_samples": 99, "train": [0], "val": [1]},
            "made for a dataset of 99 samples, but this dataset has 10",
        ),
    ],
)
def test_bad_split_files_are_refused_clearly(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "split.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError, match=message):
        Split.load(path, num_samples=10)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_must_be_a_proper_fraction(fraction: float) -> None:
    with pytest.raises(UserError, match="val_fraction"):
        Split.random(10, val_fraction=fraction, seed=0)


def test_a_folder_as_split_file_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"is a folder; pass the split\.json file"):
        Split.load(tmp_path, num_samples=10)
