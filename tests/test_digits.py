"""The offline digits DataModule and the DataModule behaviour every dataset shares, on either loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from project.cli import main
from project.data import ClassificationDataModule, DigitsDataModule
from project.data import digits as digits_module
from project.data.dataset import ImageDataset
from project.data.device_loader import DeviceBatches
from project.errors import UserError
from project.model import ConvNet
from project.structs import Example
from tests.conftest import CONFIGS, REPO, cli_args, only_run_dir


def test_sizes_and_class_names() -> None:
    dm = DigitsDataModule()
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]
    assert dm.image_shape == (1, 8, 8)
    dm.setup("fit")
    dm.setup("test")
    sizes = {name: len(ds) for name, ds in dm.datasets.items()}
    assert sizes["test"] == sizes["predict"] == 359  # 20 % of 1797, fixed
    assert sizes["train"] + sizes["val"] == 1797 - 359
    assert sizes["val"] == round(0.2 * (1797 - 359))


def test_digits_are_scikit_learns_read_without_importing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_digits' images and labels, from its file, with scikit-learn left unimported (~0.3 s); where the
    file is not at its usual place, through load_digits itself."""
    script = (
        "import sys; from project.data.digits import digits_table; "
        "table = digits_table(); print(table.shape, 'sklearn' in sys.modules)"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["(1797,", "65)", "False"], done.stderr
    from sklearn.datasets import load_digits

    expected = load_digits()
    images, labels = DigitsDataModule().load_all()
    assert torch.equal(images, torch.as_tensor(expected.images, dtype=torch.float32).div(16).unsqueeze(1))
    assert torch.equal(labels, torch.as_tensor(expected.target))
    monkeypatch.setattr(digits_module.importlib.util, "find_spec", lambda name: None)
    assert (digits_module.digits_table() == np.column_stack([expected.data, expected.target])).all()


def test_loaders_yield_normalized_examples() -> None:
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Example)
    assert batch.image.shape == (32, 1, 8, 8) and batch.image.dtype == torch.float32
    assert batch.label is not None and batch.label.dtype == torch.int64
    assert batch.index is not None and batch.index.dtype == torch.int64
    # All training images together are normalized to about zero mean and unit variance.
    images = torch.stack([dm.datasets["train"][i].image for i in range(len(dm.datasets["train"]))])
    assert abs(images.mean().item()) < 0.05 and abs(images.std().item() - 1) < 0.05


def test_index_finds_the_sample_again() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    pool_images, pool_labels = dm.load_pool()
    example = dm.datasets["val"][5]
    assert example.index is not None and example.label is not None
    assert example.label == pool_labels[example.index]
    expected = (pool_images[example.index] - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(example.image, expected)


def test_test_split_is_fixed_and_disjoint_from_train_and_val() -> None:
    a, b = DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    test_a, test_b = a.load_test()[0], b.load_test()[0]
    assert torch.equal(test_a, test_b)  # the split seed moves train/val only
    pool = a.load_pool()[0].flatten(1)
    # No test image appears in the train/val pool (digits has a few exact duplicates; none cross over).
    matches = (test_a.flatten(1)[:, None, :] == pool[None, :, :]).all(-1).any(-1)
    assert matches.float().mean() < 0.01


def test_predict_set_has_no_labels() -> None:
    dm = DigitsDataModule(batch_size=16)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch.label is None and batch.index is not None


@pytest.mark.parametrize("device_loader", [False, True])
def test_eval_batch_size_sets_evaluation_batches_only(device_loader: bool) -> None:
    """Validation, test and prediction come in batches of eval_batch_size (the last one shorter), the
    same samples in the same order as with batch_size; training keeps batch_size."""
    big = DigitsDataModule(batch_size=64, eval_batch_size=300, device_loader=device_loader)
    plain = DigitsDataModule(batch_size=64, device_loader=device_loader)
    for dm in (big, plain):
        dm.setup("fit")
        dm.setup("test")
        dm.setup("predict")
    assert [len(b) for b in big.train_dataloader()][:2] == [64, 64]
    for loader in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        batches, reference = list(getattr(big, loader)()), list(getattr(plain, loader)())
        assert [len(b) for b in batches] == [300] * (len(batches) - 1) + [len(batches[-1])]
        assert len(batches) < len(reference) and 0 < len(batches[-1]) <= 300
        assert torch.equal(torch.cat(indices_of(batches)), torch.cat(indices_of(reference))), loader
        images = [torch.cat([b.image for b in loaded]) for loaded in (batches, reference)]
        torch.testing.assert_close(*images)


def indices_of(batches: list[Example]) -> list[torch.Tensor]:
    found = [b.index for b in batches]
    assert all(index is not None for index in found)
    return found  # type: ignore[return-value]


def test_dev_subset_keeps_n_of_every_split() -> None:
    dm = DigitsDataModule(dev_subset=7)
    dm.setup("fit")
    dm.setup("test")
    assert {name: len(ds) for name, ds in dm.datasets.items()} == {
        "train": 7,
        "val": 7,
        "test": 7,
        "predict": 7,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"dev_subset": 0}, "dev_subset"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        DigitsDataModule(**kwargs)


def fit(dm: DigitsDataModule, root: Path) -> None:
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ConvNet(10, (1, 8, 8), channels=(4,), hidden=(8,)), datamodule=dm)


def test_fit_saves_the_split_and_split_file_reuses_it(tmp_path: Path) -> None:
    first = DigitsDataModule(seed=5)
    fit(first, tmp_path / "run1")
    saved = tmp_path / "run1" / "split.json"
    assert saved.is_file()

    reused = DigitsDataModule(seed=999, split_file=str(saved))  # the file wins over the seed
    fit(reused, tmp_path / "run2")
    assert first.split is not None and reused.split is not None
    assert reused.split.train == first.split.train and reused.split.val == first.split.val
    assert (tmp_path / "run2" / "split.json").read_text() == saved.read_text()


def test_split_file_from_another_dataset_size_is_refused(tmp_path: Path) -> None:
    from project.data import Split

    path = tmp_path / "other.json"
    Split.random(500, val_fraction=0.2, seed=0).save(path)
    with pytest.raises(UserError, match="made for a dataset of 500 samples, but this dataset has 1438"):
        DigitsDataModule(split_file=str(path)).setup("fit")


# ---- the device loader ----------------------------------------------------------------------------


def indices(batches: list[Example]) -> list[int]:
    return torch.cat([example.index for example in batches if example.index is not None]).tolist()


def assert_same_eval_batches(on_device: ClassificationDataModule, on_cpu: ClassificationDataModule) -> None:
    """The device loader's val and test batches are the DataLoader's: the same examples in the same
    order, normalized alike up to float rounding."""
    for split in ("val", "test"):
        ours = list(getattr(on_device, f"{split}_dataloader")())
        theirs = list(getattr(on_cpu, f"{split}_dataloader")())
        assert len(ours) == len(theirs)
        for mine, cpu in zip(ours, theirs, strict=True):
            assert torch.equal(mine.index, cpu.index) and torch.equal(mine.label, cpu.label)
            torch.testing.assert_close(mine.image, cpu.image, rtol=1e-6, atol=1e-6)


def test_device_loader_serves_the_dataloaders_examples_unaugmented() -> None:
    on_device, on_cpu = DigitsDataModule(batch_size=50, device_loader=True), DigitsDataModule(batch_size=50)
    for dm in (on_device, on_cpu):
        dm.setup("fit")
        dm.setup("test")
    assert isinstance(on_device.train_dataloader(), DeviceBatches)
    assert_same_eval_batches(on_device, on_cpu)
    # Training batches: a new order, but each image once, as the CPU DataLoader gives it: digits are
    # not augmented (a mirrored digit would be another symbol).
    train = list(on_device.train_dataloader())
    dataset = on_cpu.datasets["train"]
    assert sorted(indices(train)) == dataset.indices.tolist()
    position = {int(index): i for i, index in enumerate(dataset.indices)}
    for example in train:
        assert example.index is not None
        expected = torch.stack([dataset[position[int(index)]].image for index in example.index])
        torch.testing.assert_close(example.image, expected, rtol=1e-6, atol=1e-6)


def test_device_loader_shards_between_ddp_ranks() -> None:
    shards = []
    for rank in range(2):
        dm = DigitsDataModule(batch_size=64, device_loader=True)
        dm.setup("fit")
        # The loaders read rank, world size and device from the trainer Lightning attaches.
        # A stand-in with only what the loaders read: a real Trainer cannot be two DDP ranks at once.
        dm.trainer = SimpleNamespace(  # type: ignore[assignment]
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
            global_rank=rank,
            world_size=2,
            current_epoch=0,
        )
        shards.append(
            {split: indices(list(getattr(dm, f"{split}_dataloader")())) for split in ("train", "val")}
        )
    train, val = [shard["train"] for shard in shards], [shard["val"] for shard in shards]
    assert len(train[0]) == len(train[1]) and not set(train[0]) & set(train[1])  # lockstep, disjoint
    assert dm.split is not None and sorted(val[0] + val[1]) == dm.split.val  # each validation sample once


@pytest.mark.slow
def test_digits_trains_with_the_device_loader_through_the_cli(runs_dir: Path) -> None:
    limit = str(CONFIGS / "debug" / "limit.yaml")
    digits = str(CONFIGS / "digits.yaml")
    cli = main(
        cli_args("fit", "--config", digits, "--config", limit, "--data.init_args.device_loader", "true",
                 runs_dir=runs_dir)
    )  # fmt: skip
    assert cli is not None and isinstance(cli.datamodule.train_dataloader(), DeviceBatches)
    metrics = json.loads((only_run_dir(runs_dir) / "metrics.json").read_text())
    # 20 steps: about 0.9 on either loader (chance is 0.1).
    assert metrics["global_step"] == 20 and metrics["val/acc"] > 0.7 and metrics["test/acc"] > 0.7


class OwnDataset(ImageDataset):
    pass


class OwnTransform(DigitsDataModule):
    def train_transform(self) -> torch.nn.Module:
        return torch.nn.Identity()


class OwnDatasetClass(DigitsDataModule):
    dataset_class = OwnDataset


@pytest.mark.parametrize(
    ("cls", "name"), [(OwnTransform, "train_transform"), (OwnDatasetClass, "dataset_class")]
)
def test_device_loader_refuses_what_it_cannot_run(cls: type[DigitsDataModule], name: str) -> None:
    with pytest.raises(UserError, match=f"has its own {name}, which the device loader cannot run"):
        cls(device_loader=True)
    cls(device_loader=False)  # the DataLoader runs it
