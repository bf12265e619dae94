"""The fast path on a GPU: training images/s of configs/cifar10_fast.yaml against airbench94's
published training loop, re-implemented as a raw PyTorch loop, on CIFAR-shaped data.

    venv/bin/python benchmarks/fast_path_gpu.py [--epochs 2] [--repeats 3]     # on a CUDA GPU
    venv/bin/python benchmarks/fast_path_gpu.py --device cpu --images 600 --batch-size 64 \\
        --widths 8 16 16 --epochs 1 --repeats 1                          # a CPU smoke run of the same code

Without a CUDA GPU (and no --device) it writes its row as "not measured" and exits: no figure is
made up. Real CIFAR-10 cannot be downloaded on the benchmark machines, so every arm reads the same
random 32x32 images written in CIFAR-10's on-disk format (`--images` in each of the 5 training
batch files; the DataModule's seeded 90 % training split). Arms alternate; each is timed over whole
training epochs after one warm-up epoch (cuDNN autotuning, the whitening of the stem), without
validation, and reports images/s (median over epochs and repeats); every arm trains on the whole
split each epoch, its last batch smaller:

- raw: airbench94 as published, written from its description, no Lightning: a 2x2 stem of 24
  channels set to the PCA whitening of patches and frozen, GELU, three conv-pool-BN-GELU-conv-BN-GELU
  groups (64, 256, 256 channels; BatchNorm scales frozen), 3x3 max-pool, linear, x 1/9. The model
  in fp16 but for BatchNorm, channels_last; each epoch the whole training split is flipped and
  translated (up to 2 px, reflect padding) on the GPU at once, then SGD with Nesterov momentum and
  label smoothing 0.2 over shuffled batches of 1024 with a one-cycle schedule.
- ours, bare: `FastCifarNet` + `CIFAR10DataModule` (device loader) with the init args of
  configs/cifar10_fast.yaml under a Trainer with its precision (bf16-mixed) and `benchmark`; no
  logger, checkpointing or progress bar.
- ours, CLI: `python -m project fit --config configs/cifar10_fast.yaml`, with everything
  configs/defaults.yaml adds (W&B offline, CSV, LR monitor, progress bar, NaN guard, ...). Without
  validation the checkpoint callback, which monitors val/acc, writes nothing during the timed epochs.

Target: ours / raw >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, get_args

import pytorch_lightning as pl
import torch
import yaml
from _common import REPO, quiet, report
from torch import Tensor, nn
from torch.nn import functional as F

FAST_CONFIG = REPO / "configs" / "cifar10_fast.yaml"
NAME, COLUMNS = "fast_path_gpu", ["arm", "images/s", "ratio vs raw", "target"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- raw: airbench94's loop, written from its description ----------------------------------------


class Mul(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def batch_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)  # airbench's momentum 0.6, torch's convention
    norm.weight.requires_grad_(False)  # scales frozen at 1: only the biases train
    return norm


def conv_group(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), batch_norm(cout), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), batch_norm(cout), nn.GELU(),
    )  # fmt: skip


def airbench_net(widths: tuple[int, int, int]) -> nn.Sequential:
    stem = nn.Conv2d(3, 24, kernel_size=2)
    stem.weight.requires_grad_(False)
    return nn.Sequential(
        stem, nn.GELU(), conv_group(24, widths[0]), conv_group(widths[0], widths[1]),
        conv_group(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(widths[2], 10, bias=False),
        Mul(1 / 9),
    )  # fmt: skip


@torch.no_grad()
def whiten(stem: nn.Conv2d, images: Tensor, eps: float = 5e-4) -> None:
    """The stem's filters: the patch covariance's eigenvectors over sqrt(eigenvalue), and their negatives."""
    patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    patches = patches - patches.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh((patches.T @ patches / len(patches)).double())
    filters = (eigenvectors / (eigenvalues.clamp_min(0) + eps).sqrt()).T.float()
    stem.weight.copy_(torch.cat([filters, -filters]).reshape(stem.weight.shape))


def half_except_batchnorm(net: nn.Module) -> None:
    """fp16 weights, as airbench94 trains, but BatchNorm's parameters and statistics stay fp32."""
    net.half()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.float()


def augment(images: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """The whole set at once: a random horizontal flip, then a random translation by up to `pad` px."""
    n, device = len(images), images.device
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    padded = F.pad(images, (pad,) * 4, mode="reflect")
    dx, dy = (torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator) for _ in range(2))
    out = torch.empty_like(images)
    height, width = images.shape[-2:]
    for x in range(2 * pad + 1):
        for y in range(2 * pad + 1):
            chosen = (dx == x) & (dy == y)
            out[chosen] = padded[chosen, :, y : y + height, x : x + width]
    return out


def raw(train: tuple[Tensor, Tensor], args: argparse.Namespace, hp: dict[str, Any]) -> list[float]:
    device = torch.device(args.device)
    half = device.type == "cuda"  # as published: fp16 weights and inputs, BatchNorm in fp32
    torch.backends.cudnn.benchmark = True  # as airbench, and as the Trainer arms set it (for the process)
    torch.manual_seed(0)
    net = airbench_net(tuple(args.widths)).to(device)
    net.to(memory_format=torch.channels_last)  # in place; torch's stubs lack the combined overload
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.2470, 0.2435, 0.2616], device=device).view(1, 3, 1, 1) * 255
    images = (train[0].to(device).float() - mean) / std
    labels = train[1].to(device)
    stem = net[0]
    assert isinstance(stem, nn.Conv2d)  # airbench_net starts with its stem
    whiten(stem, images[:5000])
    if half:
        half_except_batchnorm(net)
        images = images.half()
    images = images.contiguous(memory_format=torch.channels_last)
    steps_per_epoch = -(-len(images) // args.batch_size)  # the last batch smaller, as the DataModule's
    params = [p for p in net.parameters() if p.requires_grad]
    # The config's SGD and OneCycleLR arguments.
    sgd, one_cycle = hp["optimizer"]["init_args"], hp["scheduler"]["init_args"]
    optimizer = torch.optim.SGD(
        params, lr=sgd["lr"], momentum=sgd["momentum"], nesterov=True, weight_decay=sgd["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=one_cycle["max_lr"], total_steps=steps_per_epoch * (args.epochs + 1)
    )
    generator = torch.Generator(device=device).manual_seed(0)
    times = []
    for epoch in range(args.epochs + 1):
        sync(device)
        start = time.perf_counter()
        augmented = augment(images, 2, generator)
        order = torch.randperm(len(images), device=device, generator=generator)
        for step in range(steps_per_epoch):
            chosen = order[step * args.batch_size : (step + 1) * args.batch_size]
            logits = net(augmented[chosen])
            loss = F.cross_entropy(logits.float(), labels[chosen], label_smoothing=hp["label_smoothing"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
        sync(device)
        if epoch > 0:  # the first epoch is the warm-up
            times.append(len(images) / (time.perf_counter() - start))
    return times


# ---- ours -----------------------------------------------------------------------------------------


class EpochTimer(pl.Callback):
    """Images/s of every training epoch after the first. An epoch runs from its start to the next
    one's (the last: to the end of training), so the end-of-epoch work of the module, the loggers
    and the other callbacks is inside it, whatever order Lightning calls them in; the device is
    synchronized at every boundary."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.start, self.seen, self.epoch = 0.0, 0, -1

    def _close(self, pl_module: pl.LightningModule) -> None:
        sync(pl_module.device)
        now = time.perf_counter()
        if self.epoch > 0:  # epoch 0 is the warm-up
            self.rates.append(self.seen / (now - self.start))
        self.start, self.seen = now, 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(pl_module)
        self.epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.seen += len(args[1])  # the batch: an Example

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(pl_module)


def ours_bare(
    root: Path, args: argparse.Namespace, config: dict[str, Any], batch_md5: dict[str, str]
) -> list[float]:
    from pytorch_lightning.cli import instantiate_module

    from project.data import CIFAR10DataModule
    from project.model import FastCifarNet

    pl.seed_everything(0, verbose=False)
    timer = EpochTimer()
    # Built from the config's model section as the CLI builds it (optimizer and scheduler included).
    model_args = config["model"]["init_args"] | {
        "widths": args.widths,
        "num_classes": 10,
        "in_shape": [3, 32, 32],
    }
    data_args = config["data"]["init_args"] | {
        "data_dir": str(root),
        "download": False,
        "batch_size": args.batch_size,
        "batch_md5": batch_md5,
    }
    trainer = pl.Trainer(
        accelerator=args.device, devices=1, max_epochs=args.epochs + 1, limit_val_batches=0,
        num_sanity_val_steps=0, precision=precision(args, config), benchmark=config["trainer"]["benchmark"],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], default_root_dir=root,
    )  # fmt: skip
    model = instantiate_module(FastCifarNet, model_args)
    trainer.fit(model, datamodule=CIFAR10DataModule(**data_args))
    return timer.rates


def ours_cli(
    root: Path, args: argparse.Namespace, config: dict[str, Any], batch_md5: dict[str, str]
) -> list[float]:
    from project.cli import main

    # The timer is named by import path, as any callback in a config is; this file's folder is on sys.path.
    timer = json.dumps({"class_path": f"{Path(__file__).stem}.EpochTimer"})
    flags = {
        "--config": str(FAST_CONFIG),
        "--test_after_fit": "false",
        "--data.init_args.data_dir": str(root),
        "--data.init_args.download": "false",
        "--data.init_args.batch_md5": json.dumps(batch_md5),
        "--data.init_args.batch_size": str(args.batch_size),
        "--model.init_args.widths": json.dumps(args.widths),
        "--trainer.max_epochs": str(args.epochs + 1),
        "--trainer.limit_val_batches": "0",
        "--trainer.num_sanity_val_steps": "0",
        "--trainer.accelerator": args.device,
        "--trainer.devices": "1",
        "--trainer.precision": precision(args, config),
        "--trainer.callbacks+": timer,
        "--trainer.default_root_dir": str(root / "runs"),
    }
    cli = main(["fit", *(item for pair in flags.items() for item in pair)])
    assert cli is not None
    # Run as a script, this file is `__main__`, and the CLI's copy is another class of the same name.
    (found,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "EpochTimer"]  # type: ignore[attr-defined]
    rates: list[float] = found.rates
    return rates


Precision = Literal["32-true", "16-mixed", "bf16-mixed"]  # what this benchmark's arms are meant to run


def precision(args: argparse.Namespace, config: dict[str, Any]) -> Precision:
    # bf16 autocast on a CPU works but is slower than float32: the smoke run measures the code, not speed.
    value = str(config["trainer"]["precision"]) if args.device == "cuda" else "32-true"
    for known in get_args(Precision):
        if value == known:
            return known  # get_args() is untyped: `known` is one of Precision's strings
    raise SystemExit(f"error: trainer.precision {value!r} in the config: use one of {get_args(Precision)}")


# ---- the run ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when present")
    parser.add_argument("--images", type=int, default=10_000, help="images in each of the 5 training batches")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--widths", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    quiet()
    if args.device is None:
        if not torch.cuda.is_available():
            row = {
                "arm": "ours / raw",
                "images/s": "not measured (no CUDA GPU)",
                "ratio vs raw": "-",
                "target": ">= 0.8",
            }
            report(NAME, [row], COLUMNS, note="run it on a machine with a CUDA GPU")
            return
        args.device = "cuda"
    from project.data.fake_cifar10 import write_cifar10

    config = yaml.safe_load(FAST_CONFIG.read_text())
    hp = config["model"]["init_args"]
    rates: dict[str, list[float]] = {
        "raw (airbench94 loop)": [],
        "ours, bare Trainer": [],
        "ours, CLI defaults": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = write_cifar10(Path(tmp), per_batch=args.images, test_size=10)
        from project.data import CIFAR10DataModule

        split = CIFAR10DataModule(
            data_dir=tmp, batch_md5=files.batch_md5, download=False, batch_size=args.batch_size
        )
        split.setup("fit")  # the same seeded training split the DataModules read
        assert split.split is not None
        chosen = torch.as_tensor(split.split.train)
        images = torch.as_tensor(files.train_data).view(-1, 3, 32, 32)[chosen]
        train = images, torch.as_tensor(files.train_labels)[chosen]
        for _ in range(args.repeats):
            rates["raw (airbench94 loop)"] += raw(train, args, hp)
            rates["ours, bare Trainer"] += ours_bare(Path(tmp), args, config, files.batch_md5)
            rates["ours, CLI defaults"] += ours_cli(Path(tmp), args, config, files.batch_md5)
    base = statistics.median(rates["raw (airbench94 loop)"])
    rows = [
        {
            "arm": arm,
            "images/s": statistics.median(values),
            "ratio vs raw": statistics.median(values) / base,
            "target": "-" if arm.startswith("raw") else ">= 0.8",
        }
        for arm, values in rates.items()
    ]
    note = f"{args.device}, batch {args.batch_size}, widths {args.widths}, {len(train[0])} training images"
    report(NAME, rows, COLUMNS, note=note)


if __name__ == "__main__":
    main()
