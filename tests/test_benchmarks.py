"""The GPU benchmark's code, run where CI can: its no-GPU answer, its baseline's pieces, a CPU smoke run.

The figures themselves come from `make bench` on a GPU machine; these tests make sure that run
measures what it says (the raw airbench-style loop augments and builds the net correctly) and does
not crash on its first GPU outing for a reason a CPU would have shown."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.nn import functional as F

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/fast_path_gpu.py as a module, writing its results under tmp_path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import _common
    import fast_path_gpu

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    return fast_path_gpu


def results(tmp_path: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads((tmp_path / "results" / "fast_path_gpu.json").read_text())[
        "rows"
    ]
    return rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")
def test_without_a_gpu_the_row_says_not_measured(bench: ModuleType, tmp_path: Path) -> None:
    bench.main([])
    (row,) = results(tmp_path)
    assert row["images/s"] == "not measured (no CUDA GPU)" and row["ratio vs raw"] == "-"


def test_baseline_augmentation_flips_and_translates_each_image_as_a_whole(bench: ModuleType) -> None:
    images = torch.arange(6 * 3 * 8 * 8, dtype=torch.float32).view(6, 3, 8, 8)
    out = bench.augment(images, 2, torch.Generator().manual_seed(0))
    padded = {flip: F.pad(images.flip(-1) if flip else images, (2,) * 4, mode="reflect") for flip in (0, 1)}
    for i in range(len(images)):
        crops = [
            padded[flip][i, :, y : y + 8, x : x + 8] for flip in (0, 1) for x in range(5) for y in range(5)
        ]
        assert any(torch.equal(out[i], crop) for crop in crops), f"image {i} is no flip + translation"
    assert not torch.equal(out, images)  # some image moved (seeded, so not by luck)


def test_baseline_net_and_whitening(bench: ModuleType) -> None:
    net = bench.airbench_net((8, 16, 16))
    images = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    bench.whiten(net[0], images)
    assert net(images).shape == (64, 10)
    # The first 12 stem channels decorrelate the 2x2 patches: their covariance is near the identity.
    responses = F.conv2d(images, net[0].weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = torch.cov(responses.T)
    torch.testing.assert_close(covariance, torch.eye(12), atol=0.05, rtol=0)
    assert not net[0].weight.requires_grad and net[0].bias.requires_grad  # stem frozen, its bias trains
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    bench.half_except_batchnorm(net)  # what the GPU run does
    assert net[0].weight.dtype == net[-2].weight.dtype == torch.float16
    assert all(
        m.running_var is not None and m.weight.dtype == m.running_var.dtype == torch.float32 for m in norms
    )


@pytest.mark.slow
def test_cpu_smoke_run_measures_all_three_arms(bench: ModuleType, tmp_path: Path) -> None:
    args = ["--device", "cpu", "--images", "60", "--batch-size", "32", "--widths", "4", "8", "8"]
    bench.main([*args, "--epochs", "1", "--repeats", "1"])
    rows = {row["arm"]: row for row in results(tmp_path)}
    assert set(rows) == {"raw (airbench94 loop)", "ours, bare Trainer", "ours, CLI defaults"}
    assert rows["raw (airbench94 loop)"]["ratio vs raw"] == 1.0
    for row in rows.values():
        rate = row["images/s"]
        assert isinstance(rate, float) and math.isfinite(rate) and rate > 0


@pytest.fixture(autouse=True)
def _forget_bench_modules() -> object:
    """Each test imports the benchmark afresh (its module-level state stays out of other tests)."""
    yield
    for name in ("fast_path_gpu", "_common"):
        sys.modules.pop(name, None)


# ---- benchmarks/raw_loop.py: demo.py's baseline ---------------------------------------------------


def test_the_raw_loop_trains_the_demo_net_on_the_demo_runs_split(tmp_path: Path) -> None:
    """raw_loop.py measures what demo.py says: the demo's ConvNet, on exactly the samples (normalized the
    same way) that the demo run with that split.json trained and validated on; and it trains."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import raw_loop
    finally:
        sys.path.remove(str(BENCHMARKS))
    from project.data import DigitsDataModule
    from project.model import ConvNet
    from project.structs import Example

    dm = DigitsDataModule(batch_size=64, seed=3)
    dm.setup("fit")
    assert dm.split is not None
    dm.split.save(tmp_path / "split.json")
    images, labels, train, val = raw_loop.data(str(tmp_path / "split.json"))
    for name, positions in (("train", train), ("val", val)):
        dataset = dm.datasets[name]
        theirs = Example.collate([dataset[i] for i in range(len(dataset))])
        torch.testing.assert_close(images[positions], theirs.image, atol=1e-6, rtol=0)
        assert torch.equal(labels[positions], theirs.require_label())
    ours = ConvNet(10, (1, 8, 8), channels=(32, 64), hidden=(128,))
    assert [p.shape for p in raw_loop.net().parameters()] == [p.shape for p in ours.parameters()]
    reached = raw_loop.main(str(tmp_path / "split.json"), target=0.9)
    assert reached["val_acc"] >= 0.9 and 1 <= reached["epochs"] < raw_loop.EPOCHS


def test_ratios_pair_each_repeat_with_its_neighbour_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """demo.py's and time_to_accuracy.py's ratios are the median of per-repeat ratios with their
    min-max: a machine that slows down from one repeat to the next moves both runs of a pair, not
    their ratio."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _common import paired

    demo_times, raw_times = [10.0, 20.0, 30.0], [5.0, 10.0, 15.0]  # every pair is 2.0x
    assert paired(demo_times, raw_times) == "2.00 (2.00-2.00)"
    assert paired([10.0, 40.0, 30.0], [5.0, 10.0, 20.0]) == "2.00 (1.50-4.00)"
    with pytest.raises(ValueError):  # unpaired lists are a bug, not a ratio
        paired([1.0, 2.0], [1.0])
