"""Training-loader throughput of our CIFAR10DataModule against plain torchvision.

    venv/bin/python benchmarks/data_pipeline.py [--repeats 3] [--workers 2]

Both read the same generated CIFAR-10-shaped files (10 000 images in the real on-disk format) with
the same augmentation (reflect-pad crop + flip, scale, normalize), batch size and worker count:
ours yields `Example` batches from uint8 tensors held in memory; the baseline is
`torchvision.datasets.CIFAR10` (PIL images) with `DataLoader`. One full epoch per measurement,
arms alternating; images per second, median of repeats. Target: ours >= 1.0 x baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from _common import median, quiet, report
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from project.data import CIFAR10DataModule
from project.data.fake_cifar10 import md5sum, write_cifar10

BATCH = 128


def baseline_loader(root: Path, workers: int) -> DataLoader[tuple[torch.Tensor, int]]:
    folder = root / CIFAR10.base_folder

    class Generated(CIFAR10):  # torchvision checks the real files' md5s; these are generated
        train_list = [[name, md5sum(folder / name)] for name, _ in CIFAR10.train_list]
        test_list = [[name, md5sum(folder / name)] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": md5sum(folder / CIFAR10.meta["filename"])}

    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomCrop(32, padding=4, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR10DataModule.mean, CIFAR10DataModule.std),
        ]
    )
    dataset = Generated(str(root), train=True, transform=transform, download=False)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=False)


def ours_loader(root: Path, workers: int, batch_md5: dict[str, str]) -> Iterable[object]:
    dm = CIFAR10DataModule(
        data_dir=str(root),
        batch_md5=batch_md5,
        download=False,
        batch_size=BATCH,
        num_workers=workers,
        val_fraction=0.0001,
        persistent_workers=False,
    )
    dm.setup("fit")
    return dm.train_dataloader()


def images_per_second(loader: Iterable[object], count: int) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    quiet()
    speeds: dict[str, list[float]] = {"torchvision CIFAR10 + DataLoader": [], "CIFAR10DataModule (ours)": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_cifar10(root, per_batch=2000, test_size=10)
        baseline, ours = baseline_loader(root, args.workers), ours_loader(root, args.workers, files.batch_md5)
        sizes = {"torchvision CIFAR10 + DataLoader": 10_000, "CIFAR10DataModule (ours)": 9_999}
        images_per_second(ours, 0)  # first use: page cache, worker start-up code paths
        for _ in range(args.repeats):
            speeds["torchvision CIFAR10 + DataLoader"].append(images_per_second(baseline, 10_000))
            speeds["CIFAR10DataModule (ours)"].append(
                images_per_second(ours, sizes["CIFAR10DataModule (ours)"])
            )
    base = median(speeds["torchvision CIFAR10 + DataLoader"])
    rows = [
        {"loader": name, "images/s": median(values), "ratio": median(values) / base}
        for name, values in speeds.items()
    ]
    report(
        "data_pipeline",
        rows,
        ["loader", "images/s", "ratio"],
        note=f"batch {BATCH}, {args.workers} workers, crop+flip+normalize; target: ours >= 1.0 x torchvision",
    )


if __name__ == "__main__":
    main()
