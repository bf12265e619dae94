"""`CIFAR10DataModule` on a tiny generated CIFAR-10 (project/data/fake_cifar10.py): reading, downloading,
errors, augmentation.

No network: downloads come from an `http.server` on 127.0.0.1, and "unreachable" is a closed local port.
"""

from __future__ import annotations

import functools
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from project.data.cifar10 import CIFAR10DataModule
from project.data.fake_cifar10 import (
    ARCHIVE_NAME,
    META,
    TEST_BATCH,
    TRAIN_BATCHES,
    Cifar10Files,
    md5sum,
    pack_archive,
    write_cifar10,
)
from project.errors import UserError
from project.structs import Example
from tests.conftest import unused_port

PER_BATCH = 12  # 5 x 12 = 60 pool samples: 48 train / 12 val at val_fraction 0.2
TEST_SIZE = 10


# ---- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def cifar(tmp_path: Path) -> Cifar10Files:
    """Unpacked batches in tmp_path/data/cifar-10-batches-py/."""
    return write_cifar10(tmp_path / "data", per_batch=PER_BATCH, test_size=TEST_SIZE)


@pytest.fixture
def source(tmp_path: Path) -> Cifar10Files:
    """The batches the archive is packed from, in tmp_path/source/cifar-10-batches-py/."""
    return write_cifar10(tmp_path / "source", per_batch=PER_BATCH, test_size=TEST_SIZE)


@pytest.fixture
def archive(source: Cifar10Files, tmp_path: Path) -> Path:
    """tmp_path/served/cifar-10-python.tar.gz, packed from `source`."""
    return pack_archive(source, tmp_path / "served")


@pytest.fixture
def empty_data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-file (a download given up on) is no error of this server: no
        # traceback between the test progress dots.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def archive_url(archive: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT/cifar-10-python.tar.gz, served from a background thread."""
    handler = functools.partial(_QuietHandler, directory=str(archive.parent))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE_NAME}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def dead_url() -> str:
    """A URL on a local port nobody listens on: connecting is refused at once."""
    return f"http://127.0.0.1:{unused_port()}/{ARCHIVE_NAME}"


def make_dm(data_dir: Path, files: Cifar10Files | None = None, **kwargs: object) -> CIFAR10DataModule:
    """A DataModule on `data_dir`, told the md5s of the generated `files` it is to read."""
    options: dict = {"val_fraction": 0.2, "batch_size": 4, **kwargs}
    if files is not None:
        options["batch_md5"] = files.batch_md5
    return CIFAR10DataModule(data_dir=str(data_dir), **options)


def torchvision_cifar10(files: Cifar10Files, train: bool) -> CIFAR10:
    """torchvision's own CIFAR10 reader, told the md5s of the generated files instead of the real ones."""
    generated = type(
        "GeneratedCIFAR10",
        (CIFAR10,),
        {
            "train_list": [[name, files.md5(name)] for name in TRAIN_BATCHES],
            "test_list": [[TEST_BATCH, files.md5(TEST_BATCH)]],
            "meta": {"filename": META, "key": "label_names", "md5": files.md5(META)},
        },
    )
    return generated(str(files.root), train=train, download=False)


def hwc(images: torch.Tensor) -> np.ndarray:
    """(N, 3, 32, 32) -> (N, 32, 32, 3) numpy, torchvision's `.data` layout."""
    return images.permute(0, 2, 3, 1).numpy()


# ---- the generated files themselves -----------------------------------------------------------


def test_generated_batches_load_like_python2_pickles(cifar: Cifar10Files) -> None:
    """Keys are str with encoding="latin1" and bytes with encoding="bytes", as in the real Python 2 files."""
    raw = cifar.path("data_batch_1").read_bytes()
    as_str = pickle.loads(raw, encoding="latin1")
    as_bytes = pickle.loads(raw, encoding="bytes")
    assert set(as_str) == {"batch_label", "labels", "data", "filenames"}
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert as_str["data"].dtype == np.uint8 and as_str["data"].shape == (PER_BATCH, 3072)
    np.testing.assert_array_equal(as_bytes[b"data"], cifar.train_data[:PER_BATCH])


# ---- reading ---------------------------------------------------------------------------------


def test_setup_fit_reads_the_same_pool_as_torchvision(cifar: Cifar10Files) -> None:
    dm = make_dm(cifar.root, cifar, download=False)
    dm.setup("fit")
    reference = torchvision_cifar10(cifar, train=True)
    pool = dm.datasets["train"].images
    assert pool.dtype == torch.uint8 and pool.shape == (5 * PER_BATCH, 3, 32, 32)
    np.testing.assert_array_equal(hwc(pool), reference.data)
    labels = dm.datasets["train"].labels
    assert labels is not None and labels.tolist() == reference.targets
    assert dm.datasets["val"].images is pool  # val is a view of the same pool


def test_setup_test_reads_the_same_test_set_as_torchvision(cifar: Cifar10Files) -> None:
    dm = make_dm(cifar.root, cifar, download=False)
    dm.setup("test")
    reference = torchvision_cifar10(cifar, train=False)
    test = dm.datasets["test"]
    assert test.images.shape == (TEST_SIZE, 3, 32, 32)
    np.testing.assert_array_equal(hwc(test.images), reference.data)
    assert test.labels is not None and test.labels.tolist() == reference.targets
    assert test.indices.tolist() == list(range(TEST_SIZE))


def test_pool_is_the_generated_rows_in_channel_planar_layout(cifar: Cifar10Files) -> None:
    """Row byte c*1024 + y*32 + x is channel c, pixel (y, x); batches 1..5 are concatenated in order."""
    dm = make_dm(cifar.root, cifar, download=False)
    dm.setup("fit")
    pool = dm.datasets["train"].images
    np.testing.assert_array_equal(pool.numpy(), cifar.train_images)
    i = 2 * PER_BATCH + 3  # a sample from data_batch_3
    assert pool[i, 1, 5, 7].item() == cifar.train_data[i, 1 * 1024 + 5 * 32 + 7]
    labels = dm.datasets["train"].labels
    assert labels is not None and labels.tolist() == cifar.train_labels


# ---- prepare_data: download, archive by hand, errors ------------------------------------------


def test_prepare_data_downloads_unpacks_and_setup_reads(
    source: Cifar10Files, archive: Path, archive_url: str, empty_data_dir: Path
) -> None:
    dm = make_dm(empty_data_dir, source, url=archive_url, md5=md5sum(archive))
    dm.prepare_data()
    for name in [*TRAIN_BATCHES, TEST_BATCH, META]:
        assert (dm.batches_dir / name).read_bytes() == source.path(name).read_bytes()
    dm.setup("fit")
    dm.setup("test")
    np.testing.assert_array_equal(dm.datasets["train"].images.numpy(), source.train_images)
    np.testing.assert_array_equal(dm.datasets["test"].images.numpy(), source.test_images)


def test_prepare_data_rejects_download_with_wrong_md5(archive_url: str, empty_data_dir: Path) -> None:
    dm = make_dm(empty_data_dir, url=archive_url, md5="0" * 32)
    with pytest.raises(UserError, match="md5"):
        dm.prepare_data()
    assert not dm.batches_dir.exists()


def test_prepare_data_unreachable_url_fails_fast_with_instructions(
    dead_url: str, empty_data_dir: Path
) -> None:
    dm = make_dm(empty_data_dir, url=dead_url, download_timeout=5.0)
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        dm.prepare_data()
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert dead_url in message
    assert str(empty_data_dir) in message
    assert str(empty_data_dir / ARCHIVE_NAME) in message  # where to put an archive downloaded by hand
    assert "by hand" in message
    assert "configs/digits.yaml" in message


def test_prepare_data_without_download_and_without_files_raises(dead_url: str, empty_data_dir: Path) -> None:
    dm = make_dm(empty_data_dir, url=dead_url, download=False)
    with pytest.raises(UserError, match="download is off"):
        dm.prepare_data()


@pytest.mark.parametrize("download", [True, False])
def test_prepare_data_unpacks_archive_placed_by_hand_without_network(
    source: Cifar10Files, archive: Path, dead_url: str, empty_data_dir: Path, download: bool
) -> None:
    (empty_data_dir / ARCHIVE_NAME).write_bytes(archive.read_bytes())
    # Any download attempt would fail on dead_url; with download=False the archive is still unpacked.
    dm = make_dm(empty_data_dir, source, url=dead_url, md5=md5sum(archive), download=download)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"].images) == 5 * PER_BATCH


def test_prepare_data_does_nothing_when_batches_are_there(cifar: Cifar10Files, dead_url: str) -> None:
    make_dm(cifar.root, url=dead_url, download=True).prepare_data()
    assert not (cifar.root / ARCHIVE_NAME).exists()


# ---- corrupt files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"this is not a pickle, just some text\n" * 10, id="garbage"),
        pytest.param(lambda raw: b"", id="empty"),
    ],
)
def test_damaged_batch_file_is_a_user_error_naming_the_file(
    cifar: Cifar10Files, damage: Callable[[bytes], bytes]
) -> None:
    path = cifar.path("data_batch_3")
    path.write_bytes(damage(path.read_bytes()))
    dm = make_dm(cifar.root, cifar, download=False)
    with pytest.raises(UserError) as info:
        dm.setup("fit")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x8d" + (2**63).to_bytes(8, "little"), id="huge-string-length"),
        pytest.param(b"\x95" + (2**62).to_bytes(8, "little"), id="huge-frame"),
        pytest.param(b"cno_such_module\nx\n.", id="unknown-module"),
    ],
)
def test_garbage_that_confuses_pickle_is_still_a_user_error(cifar: Cifar10Files, garbage: bytes) -> None:
    cifar.path(TEST_BATCH).write_bytes(garbage)
    with pytest.raises(UserError, match=TEST_BATCH):
        make_dm(cifar.root, cifar, download=False).setup("test")


# ---- digests checked before unpickling ------------------------------------------------------


class _Marker:
    """A pickle that, once unpickled, creates a file: what a replaced batch file could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_official_digests_by_default(cifar: Cifar10Files) -> None:
    """Without batch_md5 the official files are expected: torchvision's digests, not the generated."""
    official = {name: md5 for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list]}
    assert make_dm(cifar.root).batch_md5 == official
    with pytest.raises(
        UserError, match=r"data_batch_1 has md5 \w+, not the expected " + official["data_batch_1"]
    ):
        make_dm(cifar.root, download=False).setup("fit")


def test_a_replaced_batch_file_is_never_unpickled(cifar: Cifar10Files, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    cifar.path(TEST_BATCH).write_bytes(pickle.dumps({"data": _Marker(marker), "labels": [0]}))
    with pytest.raises(UserError) as info:
        make_dm(cifar.root, cifar, download=False).setup("test")
    assert not marker.exists()
    message = str(info.value)
    assert str(cifar.path(TEST_BATCH)) in message and "not read" in message and "\n" not in message


def test_batch_md5_must_name_every_batch_file(cifar: Cifar10Files) -> None:
    with pytest.raises(UserError, match=r"no md5 for the CIFAR-10 files \['test_batch'\]"):
        make_dm(cifar.root, batch_md5={name: "0" * 32 for name in TRAIN_BATCHES})


# ---- what the loaders yield ------------------------------------------------------------------


def test_train_loader_yields_example_batches(cifar: Cifar10Files) -> None:
    dm = make_dm(cifar.root, cifar, download=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Example)
    assert batch.image.dtype == torch.float32 and batch.image.shape == (4, 3, 32, 32)
    assert batch.label is not None and batch.index is not None
    assert batch.label.dtype == torch.int64 and batch.label.shape == (4,)
    assert batch.index.dtype == torch.int64 and batch.index.shape == (4,)
    assert batch.label.tolist() == [cifar.train_labels[i] for i in batch.index.tolist()]


def test_val_sample_is_the_normalized_generated_image_at_its_index(cifar: Cifar10Files) -> None:
    dm = make_dm(cifar.root, cifar, download=False, augment=False)
    dm.setup("fit")
    val = dm.datasets["val"]
    assert len(val) == round(0.2 * 5 * PER_BATCH)
    mean = torch.tensor(dm.mean).view(3, 1, 1)
    std = torch.tensor(dm.std).view(3, 1, 1)
    for i in (0, len(val) - 1):
        sample = val[i]
        assert sample.index is not None and sample.label is not None
        index = int(sample.index)
        expected = (torch.from_numpy(cifar.train_images[index]).float() / 255 - mean) / std
        torch.testing.assert_close(sample.image, expected)
        assert int(sample.label) == cifar.train_labels[index]


@pytest.mark.parametrize("crop_padding", [4, 0])
def test_training_images_are_augmented_as_torchvision_does(cifar: Cifar10Files, crop_padding: int) -> None:
    """The DataLoader's augmentation: reflect-padded random crop (unless crop_padding is 0) and flip."""
    dm = make_dm(cifar.root, cifar, download=False, crop_padding=crop_padding)
    dm.setup("fit")
    crop = [v2.RandomCrop(32, padding=crop_padding, padding_mode="reflect")] if crop_padding else []
    expected = v2.Compose([*crop, v2.RandomHorizontalFlip(), dm.eval_transform()])
    images = torch.from_numpy(cifar.train_images[:16])
    torch.manual_seed(0)
    ours = [dm.train_transform()(image) for image in images]
    torch.manual_seed(0)
    theirs = [expected(image) for image in images]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not all(torch.equal(a, dm.eval_transform()(i)) for a, i in zip(ours, images, strict=True))


def test_dev_subset_keeps_five_samples_per_split(cifar: Cifar10Files) -> None:
    dm = make_dm(cifar.root, cifar, download=False, dev_subset=5)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (5, 5, 5)


def test_class_metadata() -> None:
    dm = CIFAR10DataModule()
    assert len(dm.class_names) == 10 and dm.num_classes == 10
    assert dm.image_shape == (3, 32, 32)
