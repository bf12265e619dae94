"""The fast CIFAR-10 path: `FastCifarNet`, the batched augmentation of `device_augment`, the device
loader of `CIFAR10DataModule`, and `configs/cifar10_fast.yaml` end to end, all on the CPU (the same
code runs on a GPU; the `gpu` test checks that where there is one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from project.cli import main
from project.data import CIFAR10DataModule
from project.data import device_augment as aug
from project.data.device_loader import DeviceBatches, seeded_generator, shard
from project.data.fake_cifar10 import Cifar10Files, write_cifar10
from project.errors import UserError
from project.model import FastCifarNet, fast_cifar
from project.structs import Example
from tests.conftest import CONFIGS, cli_args, only_run_dir
from tests.test_digits import assert_same_eval_batches

FAST = str(CONFIGS / "cifar10_fast.yaml")
SHAPE = (3, 32, 32)
WIDTHS = (8, 16, 16)
NARROW = {"widths": WIDTHS}
MEAN, STD = CIFAR10DataModule.mean, CIFAR10DataModule.std
PER_BATCH, TEST_SIZE = 12, 10  # 60 pool samples: 48 train / 12 val at val_fraction 0.2


def batch(n: int = 8, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> Example:
    gen = torch.Generator().manual_seed(seed)
    return Example(
        image=torch.randn(n, *shape, generator=gen),
        label=torch.randint(0, 10, (n,), generator=gen),
        index=torch.arange(n),
    )


def uint8_images(n: int = 16, size: int = 32, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


# ---- FastCifarNet ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "shape"), [({}, SHAPE), (NARROW, SHAPE), ({**NARROW, "convs_per_block": 1}, (3, 8, 8))]
)
def test_forward_gives_one_logit_per_class(kwargs: dict, shape: tuple[int, int, int]) -> None:
    model = FastCifarNet(num_classes=10, in_shape=shape, **kwargs)
    prediction = model(batch(4, shape))
    assert prediction.logits.shape == (4, 10)
    assert torch.isfinite(prediction.logits).all()


def test_default_size_is_about_two_million_parameters() -> None:
    model = FastCifarNet(num_classes=10, in_shape=SHAPE)
    assert sum(p.numel() for p in model.parameters()) == 1_972_792  # "~1.97 M" in the docstring
    # The whitening stem's weight is set from data, not trained: only its 24 biases reach the optimizer.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 1_972_792 - 24 * 3 * 2 * 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(UserError, match="widths"):
        FastCifarNet(10, SHAPE, widths=(8, 0, 8))
    with pytest.raises(UserError, match="at least 2x2"):
        FastCifarNet(10, (3, 1, 1))


def record_stem_inputs(model: FastCifarNet) -> list[Tensor]:
    seen: list[Tensor] = []
    model.stem.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    return seen


def test_tta_flip_averages_image_and_mirror_in_eval_only() -> None:
    torch.manual_seed(0)
    model = FastCifarNet(num_classes=10, in_shape=SHAPE, tta_flip=True, widths=WIDTHS)
    example = batch(6)
    seen = record_stem_inputs(model)

    model.eval()
    with torch.no_grad():
        logits = model(example).logits
        expected = (model.net(example.image) + model.net(example.image.flip(-1))) / 2
    torch.testing.assert_close(logits, expected)
    assert len(seen[0]) == 12  # one pass over the image and its mirror

    model.train()
    seen.clear()
    logits = model(example).logits
    assert len(seen) == 1 and len(seen[0]) == 6 and torch.equal(seen[0], example.image)  # no flip
    model.tta_flip = False
    torch.testing.assert_close(model(example).logits, logits)


def test_channels_last_runs_the_convolutions_in_nhwc() -> None:
    torch.manual_seed(0)
    plain = FastCifarNet(num_classes=10, in_shape=SHAPE, widths=WIDTHS).eval()
    nhwc = FastCifarNet(num_classes=10, in_shape=SHAPE, channels_last=True, widths=WIDTHS).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.stem.weight.is_contiguous(memory_format=torch.channels_last)
    seen = record_stem_inputs(nhwc)
    block_inputs: list[Tensor] = []
    nhwc.net.get_submodule("block2").register_forward_hook(lambda m, args, out: block_inputs.append(args[0]))
    example = batch(4)  # contiguous NCHW: converted by the model
    with torch.no_grad():
        logits = nhwc(example).logits
        torch.testing.assert_close(logits, plain(example).logits, rtol=1e-4, atol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert block_inputs[0].is_contiguous(memory_format=torch.channels_last)  # activations stay NHWC


def test_whitening_stem_decorrelates_the_patches_it_was_fit_on() -> None:
    model = FastCifarNet(num_classes=10, in_shape=SHAPE, widths=WIDTHS)
    assert not model.stem.weight.requires_grad and not bool(model.whitened)
    # Correlated channels, as in real photos: the stem must undo the correlation.
    base = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    images = torch.cat([base, base + 0.3 * torch.randn_like(base), 2 * base], dim=1)
    model.init_whitening(images)
    assert bool(model.whitened)
    with torch.no_grad():
        out = model.stem(images)  # (16, 24, 31, 31)
    first = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    torch.testing.assert_close(first.mean(0), torch.zeros(12), atol=1e-4, rtol=0)
    covariance = first.T @ (first - first.mean(0)) / len(first)
    # Directions with (near) zero variance stay (near) zero: eps keeps them from being blown up.
    variances = covariance.diagonal()
    strong = variances > 0.5
    assert strong.sum() >= 6
    torch.testing.assert_close(variances[strong], torch.ones(int(strong.sum())), atol=1e-2, rtol=0)
    off_diagonal = covariance - torch.diag(variances)
    assert off_diagonal.abs().max() < 1e-3
    bias = model.stem.bias
    assert bias is not None
    torch.testing.assert_close(out[:, 12:] - bias[12:, None, None], -(out[:, :12] - bias[:12, None, None]))


def test_compile_is_skipped_with_a_warning_where_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FastCifarNet(num_classes=10, in_shape=SHAPE, compile=True, widths=WIDTHS)
    monkeypatch.setattr(fast_cifar, "compile_unavailable_reason", lambda device: "no compiler here")
    with pytest.warns(UserWarning, match="compile is on but skipped: no compiler here"):
        model.configure_model()
    assert model.net._compiled_call_impl is None


def test_compile_wraps_the_network_in_place_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_cifar, "compile_unavailable_reason", lambda device: None)
    off = FastCifarNet(num_classes=10, in_shape=SHAPE, widths=WIDTHS)
    off.configure_model()
    assert off.net._compiled_call_impl is None
    model = FastCifarNet(num_classes=10, in_shape=SHAPE, compile=True, widths=WIDTHS)
    keys = list(model.state_dict())
    model.configure_model()  # compiles lazily: nothing runs until the first forward
    compiled = model.net._compiled_call_impl
    assert compiled is not None
    model.configure_model()  # Lightning calls it again for the test after fit
    assert model.net._compiled_call_impl is compiled
    assert list(model.state_dict()) == keys  # checkpoints keep the uncompiled names


# ---- device_augment: equal to torchvision's CPU transforms -------------------------------------


def test_reflect_indices_mirror_without_repeating_the_edge() -> None:
    assert aug.reflect_indices(4, 2).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    with pytest.raises(ValueError, match="pad < size"):
        aug.reflect_indices(4, 4)


@pytest.mark.parametrize("padding_mode", ["reflect", "constant"])
def test_crop_padded_equals_torchvision_pad_then_crop(padding_mode: aug.PaddingMode) -> None:
    images = uint8_images(20)
    # Every corner and the identity, then random offsets.
    gen = torch.Generator().manual_seed(1)
    tops = torch.cat([torch.tensor([0, 0, 8, 8, 4]), torch.randint(0, 9, (15,), generator=gen)])
    lefts = torch.cat([torch.tensor([0, 8, 0, 8, 4]), torch.randint(0, 9, (15,), generator=gen)])
    out = aug.crop_padded(images, tops, lefts, pad=4, padding_mode=padding_mode)
    expected = torch.stack(
        [
            TF.crop(TF.pad(image, [4], padding_mode=padding_mode), int(top), int(left), 32, 32)
            for image, top, left in zip(images, tops, lefts, strict=True)
        ]
    )
    assert out.dtype == torch.uint8
    assert torch.equal(out, expected)
    assert torch.equal(out[4], images[4])  # (pad, pad) is the identity


def test_pad_images_equals_torchvision_pad() -> None:
    images = uint8_images(3)
    assert torch.equal(aug.pad_images(images, 3), TF.pad(images, [3], padding_mode="reflect"))
    assert torch.equal(aug.pad_images(images, 3, "constant"), TF.pad(images, [3]))


def test_flip_equals_torchvision_horizontal_flip() -> None:
    images = uint8_images(8)
    flags = torch.tensor([True, False, True, True, False, False, True, False])
    expected = torch.stack([TF.horizontal_flip(i) if f else i for i, f in zip(images, flags, strict=True)])
    assert torch.equal(aug.flip(images, flags), expected)


def test_random_crop_offsets_cover_the_range_and_are_seeded() -> None:
    tops, lefts = aug.random_crop_params(4000, pad=2, generator=torch.Generator().manual_seed(0))
    for offsets in (tops, lefts):
        assert offsets.min() == 0 and offsets.max() == 4
        assert set(offsets.tolist()) == {0, 1, 2, 3, 4}
    again = aug.random_crop_params(4000, pad=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tops, again[0]) and torch.equal(lefts, again[1])
    # The random version is the explicit one at the drawn offsets.
    images = uint8_images(16)
    out = aug.random_crop_padded(images, 4, torch.Generator().manual_seed(3))
    tops, lefts = aug.random_crop_params(16, 4, torch.Generator().manual_seed(3))
    assert torch.equal(out, aug.crop_padded(images, tops, lefts, 4))


def test_random_flip_flips_about_half_and_is_seeded() -> None:
    flags = aug.random_flip_flags(4000, torch.Generator().manual_seed(0))
    assert 0.45 < flags.float().mean() < 0.55
    assert torch.equal(flags, aug.random_flip_flags(4000, torch.Generator().manual_seed(0)))
    images = uint8_images(64)
    out = aug.random_flip(images, torch.Generator().manual_seed(5))
    flags = aug.random_flip_flags(64, torch.Generator().manual_seed(5))
    assert torch.equal(out, aug.flip(images, flags))
    assert 0 < int(flags.sum()) < 64


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_equals_to_dtype_then_normalize(channels_last: bool) -> None:
    images = uint8_images(8)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    expected = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])(images)
    out = aug.normalize(images, MEAN, STD)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    norm = aug.FusedNormalize(MEAN, STD)  # constants built once, reused batch after batch
    assert torch.equal(norm(images), out) and torch.equal(norm(images), out)
    with pytest.raises(ValueError, match="channels"):
        norm(images[:, :2])
    # Float input is read as 0..1 already, as ToDtype does.
    torch.testing.assert_close(aug.normalize(images.float() / 255, MEAN, STD), expected, rtol=1e-6, atol=1e-6)


# ---- CIFAR10DataModule's device loader on generated files --------------------------------------


@pytest.fixture
def cifar(tmp_path: Path) -> Cifar10Files:
    return write_cifar10(tmp_path / "data", per_batch=PER_BATCH, test_size=TEST_SIZE)


def make_dm(cifar: Cifar10Files, **kwargs: object) -> CIFAR10DataModule:
    options: dict = {"val_fraction": 0.2, "batch_size": 8, "download": False, "device_loader": True, **kwargs}
    dm = CIFAR10DataModule(data_dir=str(cifar.root), batch_md5=cifar.batch_md5, **options)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def epoch_indices(loader: DeviceBatches) -> list[int]:
    return torch.cat([example.index for example in loader if example.index is not None]).tolist()


def test_batches_are_examples_on_the_device(cifar: Cifar10Files) -> None:
    dm = make_dm(cifar, channels_last=True)
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceBatches)
    batches = list(loader)
    assert len(loader) == len(batches) == 6  # 48 training samples / 8
    for example in batches:
        assert isinstance(example, Example)
        assert example.image.shape == (8, *SHAPE) and example.image.dtype == torch.float32
        assert example.image.is_contiguous(memory_format=torch.channels_last)
        assert example.label is not None and example.label.dtype == torch.int64
        assert example.index is not None and example.index.dtype == torch.int64
        assert {t.device.type for t in (example.image, example.label, example.index)} == {"cpu"}
        labels = torch.tensor(cifar.train_labels)[example.index]
        assert torch.equal(example.label, labels)  # each label travels with its image


def test_every_training_index_once_per_epoch_in_a_new_seeded_order(cifar: Cifar10Files) -> None:
    dm = make_dm(cifar)
    assert dm.split is not None
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceBatches)  # make_dm turns the device loader on
    first, second = epoch_indices(loader), epoch_indices(loader)
    assert sorted(first) == sorted(second) == dm.split.train  # each exactly once
    assert first != second  # reshuffled each epoch
    again = make_dm(cifar).train_dataloader()
    assert isinstance(again, DeviceBatches)
    assert epoch_indices(again) == first and epoch_indices(again) == second  # same seed, same order
    reseeded = make_dm(cifar, shuffle_seed=7).train_dataloader()
    assert isinstance(reseeded, DeviceBatches) and epoch_indices(reseeded) != first
    # The epoch number comes from the trainer when there is one.
    loader.epoch = lambda: 1
    assert epoch_indices(loader) == second


def test_training_images_are_translated_and_flipped_copies(cifar: Cifar10Files) -> None:
    pool = torch.from_numpy(cifar.train_images)
    dm = make_dm(cifar, crop_padding=2)
    plain = make_dm(cifar, augment=False)
    changed = 0
    for example, unaugmented in zip(dm.train_dataloader(), plain.train_dataloader(), strict=True):
        assert example.index is not None and unaugmented.index is not None
        assert torch.equal(example.index, unaugmented.index)  # augmentation leaves the order alone
        originals = aug.normalize(pool[unaugmented.index], MEAN, STD)
        torch.testing.assert_close(unaugmented.image, originals)
        for image, original in zip(example.image, originals, strict=True):
            # Some shift by -2..2 pixels, mirrored or not, gives the training image back.
            candidates = [
                aug.crop_padded(o[None], torch.tensor([top]), torch.tensor([left]), 2)[0]
                for o in (original, original.flip(-1))
                for top in range(5)
                for left in range(5)
            ]
            assert any(torch.allclose(image, c) for c in candidates)
            changed += not torch.allclose(image, original)
    assert changed > 0


def test_val_and_test_batches_equal_the_cpu_datamodule(cifar: Cifar10Files) -> None:
    device_dm = make_dm(cifar)
    cpu_dm = make_dm(cifar, device_loader=False)
    device_dm.setup("test")
    cpu_dm.setup("test")
    assert_same_eval_batches(device_dm, cpu_dm)


def test_shard_splits_an_order_between_ranks() -> None:
    order = torch.tensor([5, 3, 9, 0, 7, 1, 8, 2, 6, 4])
    even = [shard(order, rank, 3, even=True) for rank in range(3)]
    assert [s.tolist() for s in even] == [[5, 0, 8], [3, 7, 2], [9, 1, 6]]  # the tail (4) is dropped
    uneven = [shard(order, rank, 3, even=False) for rank in range(3)]
    assert [len(s) for s in uneven] == [4, 3, 3]
    assert sorted(torch.cat(uneven).tolist()) == list(range(10))  # each sample evaluated once
    assert torch.equal(shard(order, 0, 1, even=True), order)
    with pytest.raises(ValueError, match="rank"):
        shard(order, 3, 3, even=True)


def test_ranks_read_disjoint_equal_shards_of_the_same_permutation() -> None:
    images = uint8_images(21)
    indices = torch.arange(100, 121)

    def loader(rank: int, shuffle: bool) -> DeviceBatches:
        return DeviceBatches(
            images, None, indices, 4, MEAN, STD, shuffle=shuffle, seed=3, rank=rank, world_size=2
        )

    train = [epoch_indices(loader(rank, shuffle=True)) for rank in range(2)]
    assert [len(loader(rank, True)) for rank in range(2)] == [3, 3]  # lockstep: same batch count
    assert len(train[0]) == len(train[1]) == 10 and not set(train[0]) & set(train[1])
    assert {*train[0], *train[1]} < set(indices.tolist())  # one sample left out this epoch
    val = [epoch_indices(loader(rank, shuffle=False)) for rank in range(2)]
    assert sorted(val[0] + val[1]) == indices.tolist()


def test_seeded_generator_depends_on_seed_epoch_and_stream() -> None:
    def draw(seed: int, epoch: int, stream: int = 0) -> list[int]:
        return torch.randint(0, 2**30, (4,), generator=seeded_generator(seed, epoch, stream)).tolist()

    assert draw(1, 0) == draw(1, 0)
    assert len({tuple(draw(*args)) for args in [(1, 0), (0, 1), (1, 1), (1, 0, 1)]}) == 4


def test_bad_crop_padding_is_refused(cifar: Cifar10Files) -> None:
    with pytest.raises(UserError, match="crop_padding"):
        CIFAR10DataModule(data_dir=str(cifar.root), crop_padding=32)


# ---- the config, end to end ---------------------------------------------------------------------


def test_fast_config_prints(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", FAST, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "project.model.FastCifarNet" in out and "project.data.CIFAR10DataModule" in out
    assert "device_loader: true" in out
    assert "precision: bf16-mixed" in out


@pytest.mark.slow
def test_fast_config_fits_end_to_end_on_cpu(cifar: Cifar10Files, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    cli = main(
        cli_args(
            "fit",
            "--config",
            FAST,
            "--trainer.precision",
            "32-true",
            "--trainer.accelerator",
            "cpu",
            "--data.init_args.data_dir",
            str(cifar.root),
            "--data.init_args.batch_md5",
            json.dumps(cifar.batch_md5),
            "--data.init_args.download",
            "false",
            "--data.init_args.batch_size",
            "8",
            "--model.init_args.widths",
            "[8,16,16]",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            runs_dir=runs_dir,
        )
    )
    assert cli is not None
    run_dir = only_run_dir(runs_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and "val/acc" in metrics and "test/acc" in metrics
    model = cli.model
    assert isinstance(model, FastCifarNet) and model.tta_flip and model.channels_last
    # The stem was whitened from the first training batch, and the checkpoint remembers it.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert bool(checkpoint["state_dict"]["whitened"])
    restored = FastCifarNet.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert tuple(restored.hparams["widths"]) == (8, 16, 16)
    assert torch.equal(restored.stem.weight, checkpoint["state_dict"]["net.stem.weight"])


# ---- on a GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_resident_bf16_on_cuda(cifar: Cifar10Files) -> None:
    cuda = torch.device("cuda")
    images = uint8_images(64)
    # The same explicit augmentation gives the same bytes on the GPU as on the CPU.
    tops, lefts = aug.random_crop_params(64, 4, torch.Generator().manual_seed(0))
    flags = aug.random_flip_flags(64, torch.Generator().manual_seed(1))
    on_cpu = aug.flip(aug.crop_padded(images, tops, lefts, 4), flags)
    on_gpu = aug.flip(aug.crop_padded(images.to(cuda), tops.to(cuda), lefts.to(cuda), 4), flags.to(cuda))
    assert torch.equal(on_gpu.cpu(), on_cpu)
    # Random draws from a generator on the GPU stay there.
    out = aug.random_flip(
        aug.random_crop_padded(images.to(cuda), 2, torch.Generator(cuda)), torch.Generator(cuda)
    )
    assert out.device.type == "cuda"

    dm = make_dm(cifar, channels_last=True)
    pool = dm.datasets["train"]
    loader = DeviceBatches(
        pool.images[pool.indices].to(cuda),
        pool.labels[pool.indices].to(cuda) if pool.labels is not None else None,
        pool.indices,
        8,
        MEAN,
        STD,
        shuffle=True,
        augmentation=aug.Augmentation(crop_padding=2, flip=True),
        channels_last=True,
    )
    model = FastCifarNet(num_classes=10, in_shape=SHAPE, channels_last=True, tta_flip=True).to(cuda)
    example = next(iter(loader))
    assert (
        example.image.device.type == "cuda"
        and example.index is not None
        and example.index.device.type == "cuda"
    )
    assert example.image.is_contiguous(memory_format=torch.channels_last)
    model.init_whitening(example.image)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.compute_loss(example, model(example)).total
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(example).logits
    assert logits.shape == (8, 10) and logits.dtype == torch.bfloat16
