"""`CIFAR10DataModule`: CIFAR-10 (60 000 32x32 colour images, 10 classes), read into memory.

    dm = CIFAR10DataModule(data_dir="data", batch_size=128)
    dm.prepare_data()   # downloads + md5-checks + unpacks once (Lightning calls it on one process per node)
    dm.setup("fit")     # md5-checks, then reads the python batches; seeded 45k/5k train/val split
    CIFAR10DataModule(device_loader=True, crop_padding=2)   # the fast path: batches made on the device

Own code on torchvision's download helpers rather than lightning-bolts' CIFAR10DataModule: bolts'
last release needs pytorch-lightning < 2. Without network, put `cifar-10-python.tar.gz` in
`data_dir` (it is unpacked on the next run) or train offline on `DigitsDataModule`.

The batch files are pickles, and unpickling a file runs whatever code it names. So each file's md5
is checked against the official one (torchvision's `CIFAR10.train_list`/`test_list`) before it is
unpickled; a file that differs is never unpickled. Another copy (the generated CIFAR-10 of the tests,
fake_cifar10.py) is read only when its own digests are passed as `batch_md5`.
"""

from __future__ import annotations

import hashlib
import pickle
import socket
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from project.data.base import ClassificationDataModule
from project.data.device_augment import Augmentation, PaddingMode
from project.errors import UserError

OFFLINE_COMMAND = "python -m project fit --config configs/digits.yaml"
# The md5 of each official python batch file, by name, as torchvision checks them.
OFFICIAL_BATCH_MD5 = {name: md5 for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list]}


class CIFAR10DataModule(ClassificationDataModule):
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    input_shape = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        augment: bool = True,
        crop_padding: int = 4,
        padding_mode: PaddingMode = "reflect",
        url: str = CIFAR10.url,
        md5: str = CIFAR10.tgz_md5,
        download_timeout: float = 20.0,
        batch_md5: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            data_dir: folder holding `cifar-10-batches-py/` (or the archive, or nothing yet).
            download: fetch the archive when the batches are missing.
            augment: random translation (`crop_padding`) + horizontal flip of training images.
            crop_padding: translate training images by up to this many pixels (pad, then crop back to
                32x32) when `augment` is on; 0: no translation. airbench uses 2.
            padding_mode: what the padding holds: "reflect" (mirrored pixels) or "constant" (zeros).
            url: where the archive is downloaded from (a mirror, or a local server in tests).
            md5: checksum the downloaded archive must have.
            download_timeout: seconds without an answer before the download gives up.
            batch_md5: the md5 of each batch file (data_batch_1..5, test_batch), checked before the
                file is unpickled; default (null): the official ones. Only to read another copy,
                e.g. the generated one of the tests (fake_cifar10.py: `Cifar10Files.batch_md5`).
            **kwargs: batch size, split, dev subset and loader settings (the device loader too), see
                `ClassificationDataModule`.
        """
        super().__init__(**kwargs)
        if not 0 <= crop_padding < min(self.input_shape[1:]):
            raise UserError(f"crop_padding must be in 0..{min(self.input_shape[1:]) - 1}, got {crop_padding}")
        self.data_dir = Path(data_dir)
        self.download = download
        self.augment = augment
        self.crop_padding = crop_padding
        self.padding_mode: PaddingMode = padding_mode
        self.url = url
        self.md5 = md5
        self.download_timeout = download_timeout
        expected = OFFICIAL_BATCH_MD5 if batch_md5 is None else dict(batch_md5)
        missing = sorted(set(OFFICIAL_BATCH_MD5) - set(expected))
        if missing:
            raise UserError(f"batch_md5 gives no md5 for the CIFAR-10 files {missing}")
        self.batch_md5 = expected

    @property
    def batches_dir(self) -> Path:
        return self.data_dir / CIFAR10.base_folder

    @property
    def archive(self) -> Path:
        return self.data_dir / CIFAR10.filename

    def _batch_files(self) -> list[Path]:
        return [self.batches_dir / name for name, _ in [*CIFAR10.train_list, *CIFAR10.test_list]]

    def prepare_data(self) -> None:
        if all(path.is_file() for path in self._batch_files()):
            return
        if self.archive.is_file() and check_integrity(str(self.archive), self.md5):
            self._download()  # only unpacks: torchvision skips the download of a file with the right md5
            return
        if not self.download:
            raise UserError(self._missing_message("download is off (data.download: false)"))
        self._download()

    def _download(self) -> None:
        # urllib waits forever by default; a dead network must fail in seconds, not hang the run.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.download_timeout)
        try:
            download_and_extract_archive(
                self.url, str(self.data_dir), filename=CIFAR10.filename, md5=self.md5
            )
        except (urllib.error.URLError, OSError) as e:
            raise UserError(self._missing_message(f"downloading {self.url} failed: {e}")) from None
        except RuntimeError as e:  # torchvision's "File not found or corrupted." after an md5 mismatch
            raise UserError(
                self._missing_message(f"the archive from {self.url} failed its md5 check ({e})")
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
        missing = [str(p) for p in self._batch_files() if not p.is_file()]
        if missing:
            raise UserError(f"{self.archive} unpacked, but these CIFAR-10 files are missing: {missing}")

    def _missing_message(self, reason: str) -> str:
        return (
            f"CIFAR-10 is not in {self.batches_dir}/ and {reason}.\n"
            f"To fix it, either:\n"
            f"  - download {self.url} by hand (md5 {self.md5}) and put it at {self.archive};\n"
            f"    the next run checks and unpacks it, or unpack it yourself into {self.data_dir}/\n"
            f"  - or train offline on scikit-learn's bundled digits: {OFFLINE_COMMAND}"
        )

    def _read_batch(self, path: Path) -> tuple[Tensor, Tensor]:
        """One python-format batch file -> uint8 images (N, 3, 32, 32), int64 labels (N,)."""
        if not path.is_file():
            raise UserError(
                f"CIFAR-10 file {path} is missing; delete {self.batches_dir}/ and run again to unpack it"
            )
        # Unpickling runs any code the file names: only a file with the expected digest is read.
        expected = self.batch_md5[path.name]
        with open(path, "rb") as f:
            raw = f.read()
        actual = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if actual != expected:
            raise UserError(
                f"CIFAR-10 file {path} has md5 {actual}, not the expected {expected}: it is not the "
                f"official file (truncated, corrupt or replaced) and is not read. Delete "
                f"{self.batches_dir}/ and run again to unpack a fresh copy."
            )
        try:
            entry = pickle.loads(raw, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry["labels"])
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels are {labels.dtype}, not integers")
            labels = labels.astype(np.int64)
            images = data.reshape(len(labels), *self.input_shape)
        except Exception as e:  # unpickling garbage can raise almost anything (MemoryError, ImportError...)
            raise UserError(
                f"CIFAR-10 file {path} is truncated or corrupt ({type(e).__name__}: {e}). "
                f"Delete {self.batches_dir}/ and run again to unpack a fresh copy."
            ) from None
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= self.num_classes:
            raise UserError(
                f"CIFAR-10 file {path} has labels outside 0..{self.num_classes - 1}; it is corrupt"
            )
        return torch.from_numpy(images.copy()), torch.from_numpy(labels)

    def _read(self, files: list[tuple[str, str]]) -> tuple[Tensor, Tensor]:
        parts = [self._read_batch(self.batches_dir / name) for name, _ in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def load_pool(self) -> tuple[Tensor, Tensor]:
        return self._read(CIFAR10.train_list)

    def load_test(self) -> tuple[Tensor, Tensor]:
        return self._read(CIFAR10.test_list)

    def augmentation(self) -> Augmentation | None:
        if not self.augment:
            return None
        return Augmentation(crop_padding=self.crop_padding, padding_mode=self.padding_mode, flip=True)
