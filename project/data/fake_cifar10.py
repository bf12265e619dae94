"""A small, seeded, random CIFAR-10 in the exact on-disk format of the real one: what the tests and
benchmarks read, without network.

    files = write_cifar10(tmp_path / "data")         # tmp_path/data/cifar-10-batches-py/{data_batch_1..5,...}
    CIFAR10DataModule(data_dir=str(files.root), batch_md5=files.batch_md5)   # reads these, not the real ones
    archive = pack_archive(files, tmp_path / "srv")  # tmp_path/srv/cifar-10-python.tar.gz
    md5sum(archive)

Like the real files (pickled by Python 2), every string in the batches is a Python 2 `str`: it loads
as `str` with `pickle.load(f, encoding="latin1")` (what torchvision does) and as `bytes` with
`encoding="bytes"`. `data` is a uint8 numpy array (N, 3072), channel-planar: 1024 red bytes (row by
row), then 1024 green, then 1024 blue; `labels` is a list of ints 0..9.

Their digests differ from the official ones, which `CIFAR10DataModule` checks before unpickling a
batch: `batch_md5` holds the digests of the files as written, for its `batch_md5` argument (on the
command line: `--data.init_args.batch_md5 '<json.dumps(files.batch_md5)>'`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BASE_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# The pure-Python pickler, whose opcodes can be overridden. Typed as Any: typeshed's stub of it lacks
# the internals overridden and called here (dispatch, write, memoize).
_PurePickler: Any = pickle._Pickler


class _Python2Pickler(_PurePickler):
    """Protocol 2, with `str` and `bytes` written as Python 2 strings (opcodes U / T), as cPickle did."""

    dispatch = _PurePickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        # Name numpy's unpickling helper the way numpy 1.x (and the real files) did.
        if getattr(obj, "__module__", None) == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + f"numpy.core.multiarray\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def python2_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def md5sum(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Cifar10Files:
    root: Path
    """The data_dir: holds `cifar-10-batches-py/`."""
    train_data: np.ndarray
    """uint8 (N, 3072): the rows of data_batch_1..5, in file order (the train+val pool)."""
    train_labels: list[int]
    test_data: np.ndarray
    test_labels: list[int]
    batch_md5: dict[str, str] = field(default_factory=dict)
    """The md5 of each batch file (data_batch_1..5, test_batch) as written: CIFAR10DataModule's
    `batch_md5` argument. Recorded when written, so a file damaged since then fails the check."""

    @property
    def batches_dir(self) -> Path:
        return self.root / BASE_FOLDER

    @property
    def train_images(self) -> np.ndarray:
        """uint8 (N, 3, 32, 32), the pool as CHW images."""
        return self.train_data.reshape(-1, 3, 32, 32)

    @property
    def test_images(self) -> np.ndarray:
        return self.test_data.reshape(-1, 3, 32, 32)

    def path(self, name: str) -> Path:
        return self.batches_dir / name

    def md5(self, name: str) -> str:
        return md5sum(self.path(name))


def _batch(data: np.ndarray, labels: list[int], batch_label: str, first: int) -> dict[str, Any]:
    return {
        "batch_label": batch_label,
        "labels": labels,
        "data": data,
        "filenames": [f"generated_s_{first + i:06d}.png" for i in range(len(labels))],
    }


def write_cifar10(root: Path, per_batch: int = 12, test_size: int = 10, seed: int = 0) -> Cifar10Files:
    """Write `root/cifar-10-batches-py/` with `per_batch` random images in each of the 5 training batches."""
    rng = np.random.default_rng(seed)
    batches_dir = Path(root) / BASE_FOLDER
    batches_dir.mkdir(parents=True, exist_ok=True)

    def random_batch(n: int) -> tuple[np.ndarray, list[int]]:
        return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()

    train_parts = []
    for i, name in enumerate(TRAIN_BATCHES):
        data, labels = random_batch(per_batch)
        batch = _batch(data, labels, f"training batch {i + 1} of 5", first=i * per_batch)
        (batches_dir / name).write_bytes(python2_pickle(batch))
        train_parts.append((data, labels))
    test_data, test_labels = random_batch(test_size)
    (batches_dir / TEST_BATCH).write_bytes(
        python2_pickle(_batch(test_data, test_labels, "testing batch 1 of 1", first=0))
    )
    meta = {"num_cases_per_batch": per_batch, "label_names": LABEL_NAMES, "num_vis": 3072}
    (batches_dir / META).write_bytes(python2_pickle(meta))
    (batches_dir / "readme.html").write_text("<html>generated CIFAR-10 stand-in for tests</html>\n")
    return Cifar10Files(
        root=Path(root),
        train_data=np.concatenate([data for data, _ in train_parts]),
        train_labels=[label for _, labels in train_parts for label in labels],
        test_data=test_data,
        test_labels=test_labels,
        batch_md5={name: md5sum(batches_dir / name) for name in [*TRAIN_BATCHES, TEST_BATCH]},
    )


def pack_archive(files: Cifar10Files, folder: Path) -> Path:
    """Pack `files.batches_dir` into `folder/cifar-10-python.tar.gz`, with `cifar-10-batches-py/` at its top.

    Byte-for-byte reproducible (fixed mtimes, owners and gzip header), so its md5 depends on the data only.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / ARCHIVE_NAME

    def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        tar.add(files.batches_dir, arcname=BASE_FOLDER, recursive=False, filter=normalized)
        for path in sorted(files.batches_dir.iterdir()):
            tar.add(path, arcname=f"{BASE_FOLDER}/{path.name}", filter=normalized)
    return archive
