"""Output regression: every model variant on every DataModule, one seeded training step, pinned.

For each pair, one real Trainer step on the DataModule's first training batch records the batch, the
initial weights, every layer's output, the gradients and the updated weights as small summaries
(shape, dtype, mean, std, a hash of the rounded values). They are compared with the golden files
committed in tests/regress/<device type>/<Model>_<DataModule>.json; a change fails naming the tensor
that moved and by how much. After a change meant to move the numbers, rewrite them:

    venv/bin/python -m pytest -k regress --regen-regress

Models and DataModules are discovered from the package's exports, so a new one is covered (or the
test says which golden file is missing). `test_regress_golden_losses_of_the_digits_demo` pins the
first training losses of configs/digits.yaml as the CLI builds it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

import project.data
import project.model
from project.cli import main
from project.data import ClassificationDataModule
from project.data.fake_cifar10 import write_cifar10
from project.model import BaseModel
from tests.conftest import CONFIGS, cli_args

GOLDEN = Path(__file__).resolve().parent / "regress"
# A tensor fails when its mean or std moves by more than this share of its recorded spread (std, or
# |mean| for a constant tensor). One layer's output scaled by 1.001 moves its std by 1e-3, ten times
# this; float32 rounding differences (1 vs 2 threads, another CPU) move them far less.
RTOL = 1e-4
# Plus an absolute 1e-7: some gradients are zero but for float noise (a conv bias before BatchNorm).
# Adam turns such a gradient into a full step of +-lr in a direction the noise picks, so the updated
# value of a parameter whose recorded gradient is below NOISE is not compared (shape and dtype are).
ATOL = 1e-7
NOISE = 1e-6
HASH_DIGITS = 4  # the hash covers values rounded to 1e-4 of the tensor's largest magnitude
BATCH = 8

MODELS: dict[str, type[BaseModel[Any, Any]]] = {
    name: obj
    for name in project.model.__all__
    if isinstance(obj := getattr(project.model, name), type)
    and issubclass(obj, BaseModel)
    and obj is not BaseModel
}
DATAMODULES: dict[str, type[ClassificationDataModule]] = {
    name: obj
    for name in project.data.__all__
    if isinstance(obj := getattr(project.data, name), type)
    and issubclass(obj, ClassificationDataModule)
    and hasattr(obj, "class_names")  # a concrete dataset; a base such as BundledDataModule has none
}
# Models built of 2-D convolutions take (C, H, W) images only; MLPNet takes any input.
IMAGE_ONLY = {"ConvNet", "CifarResNet", "FastCifarNet", "LatentClassifier", "AutoencoderClassifier"}
# Built for 32x32 CIFAR images (11 M and 2 M parameters): on other datasets they add seconds, not coverage.
ONLY_ON = {"CifarResNet": "CIFAR10DataModule", "FastCifarNet": "CIFAR10DataModule"}


def datamodule_args(name: str, tmp_path: Path) -> dict[str, Any]:
    """Arguments for a DataModule whose data is local: the bundled ones need none; CIFAR-10 reads
    generated files in the real format. A new dataset that needs more is named by the failure."""
    args: dict[str, Any] = {"batch_size": BATCH}
    if name == "CIFAR10DataModule":
        files = write_cifar10(tmp_path / "data")
        args |= {"data_dir": str(files.root), "batch_md5": files.batch_md5, "download": False}
    return args


def cases() -> Iterator[Any]:
    for dm_name, dm_class in DATAMODULES.items():
        images = len(getattr(dm_class, "input_shape", getattr(dm_class, "image_shape", ()))) == 3
        for model_name in MODELS:
            if (model_name in IMAGE_ONLY and not images) or ONLY_ON.get(model_name, dm_name) != dm_name:
                continue
            yield pytest.param(model_name, dm_name, id=f"{model_name}_{dm_name}")


CASES = list(cases())
DEVICES = ["cpu"] + [pytest.param("cuda", marks=pytest.mark.gpu)] * torch.cuda.is_available()


# ---- summaries -----------------------------------------------------------------------------------


def summary(tensor: Tensor) -> dict[str, Any]:
    x = tensor.detach().cpu().float()
    std, mean = torch.std_mean(x, correction=0) if x.numel() else (torch.zeros(()), torch.zeros(()))
    scale = float(x.abs().max()) if x.numel() else 0.0
    rounded = torch.round(x * (10**HASH_DIGITS / scale)) if scale > 0 else x
    return {
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "mean": float(mean),
        "std": float(std),
        "hash": hashlib.blake2b(rounded.to(torch.int32).numpy().tobytes(), digest_size=8).hexdigest(),
    }


def tensors_of(value: Any, prefix: str) -> dict[str, Tensor]:
    """The tensors of a struct (Example, Prediction), a tuple or a tensor, by name."""
    if isinstance(value, Tensor):
        return {prefix: value}
    if is_dataclass(value):
        items = [(f.name, getattr(value, f.name)) for f in fields(value)]
    elif isinstance(value, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {}
    found: dict[str, Tensor] = {}
    for name, item in items:
        found |= tensors_of(item, f"{prefix}.{name}" if prefix else name)
    return found


class Recorder(pl.Callback):
    """Summarizes one training step: the batch and weights before it, every layer's output, the
    gradients, the loss and the weights after the optimizer step."""

    def __init__(self, before_step: Callable[[nn.Module], None] | None = None) -> None:
        self.record: dict[str, dict[str, Any]] = {}
        self.before_step = before_step
        self._hooks: list[Any] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, _: int
    ) -> None:
        if self.before_step is not None:
            self.before_step(pl_module)
        # The step's own randomness (dropout) starts from a fixed state, whatever ran before it in this
        # process: Lightning and earlier tests may draw from the global generator a varying number of times.
        torch.manual_seed(0)
        self.record["batch"] = {k: summary(v) for k, v in tensors_of(batch, "").items()}
        self.record["initial"] = {k: summary(v) for k, v in pl_module.state_dict().items()}
        outputs: dict[str, Any] = {}
        self.record["outputs"] = outputs

        def hook(name: str) -> Callable[..., None]:
            def save(module: nn.Module, args: Any, output: Any) -> None:
                # Summarized at once: a later in-place op (ReLU(inplace=True)) would change the tensor.
                for key, tensor in tensors_of(output, name).items():
                    calls = sum(k == key or k.startswith(f"{key}#") for k in outputs)
                    outputs[f"{key}#{calls + 1}" if calls else key] = summary(tensor)

            return save

        for name, module in pl_module.named_modules():
            if name and not any(module.children()):  # every leaf layer
                self._hooks.append(module.register_forward_hook(hook(name)))
        self._hooks.append(pl_module.register_forward_hook(hook("model")))  # the Prediction

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._hooks:
            handle.remove()
        self.record["gradients"] = {
            name: summary(p.grad) for name, p in pl_module.named_parameters() if p.grad is not None
        }

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, _: int
    ) -> None:
        self.record["loss"] = {"total": summary(outputs["loss"])}
        self.record["updated"] = {k: summary(v) for k, v in pl_module.state_dict().items()}


def one_step(
    model_name: str,
    dm_name: str,
    device: str,
    tmp_path: Path,
    before_step: Callable[[nn.Module], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Seed, build the pair, run one real training step and return its record."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    pl.seed_everything(0, verbose=False)
    try:
        return _one_step(model_name, dm_name, device, tmp_path, before_step)
    finally:  # leave no seed behind for the tests after this one
        if seed is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed


def _one_step(
    model_name: str,
    dm_name: str,
    device: str,
    tmp_path: Path,
    before_step: Callable[[nn.Module], None] | None,
) -> dict[str, dict[str, Any]]:
    datamodule = DATAMODULES[dm_name](**datamodule_args(dm_name, tmp_path))
    in_shape: Any = tuple(datamodule.image_shape)  # (C, H, W) or, for vectors, (features,)
    try:
        model = MODELS[model_name](num_classes=len(datamodule.class_names), in_shape=in_shape)
    except Exception as e:  # a new model that takes images only, paired with vector data
        pytest.fail(
            f"{model_name} cannot be built for {dm_name}'s inputs {in_shape}: {e}. If it takes images "
            "only, add it to IMAGE_ONLY in tests/test_regress.py"
        )
    recorder = Recorder(before_step)
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        max_steps=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)
    return recorder.record


# ---- golden files --------------------------------------------------------------------------------


def golden_path(model_name: str, dm_name: str, device: str) -> Path:
    return GOLDEN / device / f"{model_name}_{dm_name}.json"


def write_golden(path: Path, record: dict[str, dict[str, Any]]) -> None:
    """One line per tensor, so a regenerated file's diff shows which tensors moved."""
    lines = ["{"]
    for i, (section, entries) in enumerate(record.items()):
        lines.append(f"  {json.dumps(section)}: {{")
        body = [f"    {json.dumps(name)}: {json.dumps(entry)}" for name, entry in entries.items()]
        lines.append(",\n".join(body))
        lines.append("  }" + ("," if i < len(record) - 1 else ""))
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def differences(
    expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """(what moved beyond the tolerance, tensors whose rounded values changed within it)."""
    moved: list[str] = []
    rehashed: list[str] = []
    noise = {
        name
        for name, grad in expected.get("gradients", {}).items()
        if grad["std"] < NOISE and abs(grad["mean"]) < NOISE
    }
    for section in dict.fromkeys([*expected, *actual]):  # in step order: the first line is where it began
        want, got = expected.get(section, {}), actual.get(section, {})
        for name in sorted(want.keys() - got.keys()):
            moved.append(f"{section}/{name}: gone")
        for name in sorted(got.keys() - want.keys()):
            moved.append(f"{section}/{name}: new")
        for name in sorted(want.keys() & got.keys()):
            a, b = want[name], got[name]
            where = f"{section}/{name}"
            if (a["shape"], a["dtype"]) != (b["shape"], b["dtype"]):
                moved.append(f"{where}: {a['dtype']}{a['shape']} -> {b['dtype']}{b['shape']}")
                continue
            if section == "updated" and name in noise:
                continue
            spread = a["std"] or abs(a["mean"]) or 1e-12
            worst = max(max(abs(b[k] - a[k]) - ATOL, 0.0) / spread for k in ("mean", "std"))
            if worst > RTOL or math.isnan(worst):
                moved.append(
                    f"{where}: mean {a['mean']:.6g} -> {b['mean']:.6g}, std {a['std']:.6g} -> {b['std']:.6g} "
                    f"(moved {worst:.2e} of its spread; tolerance {RTOL:.0e})"
                )
            elif a["hash"] != b["hash"]:
                rehashed.append(where)
    return moved, rehashed


def compare(path: Path, record: dict[str, dict[str, Any]], regen: bool) -> None:
    if regen:
        write_golden(path, record)
        return
    if not path.is_file():
        pytest.fail(f"no golden file {path}: create it with `pytest -k regress --regen-regress`")
    moved, rehashed = differences(json.loads(path.read_text()), record)
    if moved:
        shown = "\n  ".join(moved[:15]) + (f"\n  ... and {len(moved) - 15} more" if len(moved) > 15 else "")
        pytest.fail(
            f"{len(moved)} tensors differ from {path.name}:\n  {shown}\n"
            "If the change was intended, regenerate with `pytest -k regress --regen-regress` and commit."
        )
    if rehashed:
        warnings.warn(
            f"{path.name}: {len(rehashed)} tensors are within tolerance but their rounded values changed "
            f"(float noise of another CPU/library, or a change too small to move mean/std): {rehashed[:5]}",
            stacklevel=2,
        )


# ---- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("model_name", "dm_name"), CASES)
def test_regress_one_training_step(
    model_name: str, dm_name: str, device: str, tmp_path: Path, regen_regress: bool
) -> None:
    path = golden_path(model_name, dm_name, device)
    if device != "cpu" and not path.is_file() and not regen_regress:
        pytest.skip(f"no golden file for {device} yet: regenerate on a {device} machine")
    compare(path, one_step(model_name, dm_name, device, tmp_path), regen_regress)


def test_regress_every_model_and_datamodule_is_covered() -> None:
    covered_models = {case.values[0] for case in CASES}
    covered_data = {case.values[1] for case in CASES}
    assert covered_models == set(MODELS), f"models on no DataModule: {set(MODELS) - covered_models}"
    assert covered_data == set(DATAMODULES), f"DataModules with no model: {set(DATAMODULES) - covered_data}"
    assert {"ConvNet", "CifarResNet", "FastCifarNet", "AutoencoderClassifier"} <= set(
        MODELS
    )  # discovery works


def test_regress_golden_files_are_those_of_the_current_cases(regen_regress: bool) -> None:
    """A golden file of a removed model or dataset is stale (with --regen-regress: deleted)."""
    expected = {f"{case.values[0]}_{case.values[1]}.json" for case in CASES} | {LOSSES_FILE.name}
    stale = [p for p in sorted(GOLDEN.glob("*/*.json")) if p.name not in expected]
    if regen_regress:
        for path in stale:
            path.unlink()
        return
    assert not stale, f"golden files of no current model/DataModule pair (delete them): {stale}"


# Every layer of the digits ConvNet that has a weight: convolutions, BatchNorms, Linears.
LAYERS = [
    name
    for name, m in MODELS["ConvNet"](10, (1, 8, 8)).named_modules()
    if isinstance(getattr(m, "weight", None), Tensor)
]


@pytest.mark.parametrize("layer", LAYERS)
def test_regress_fails_when_one_layer_moves_by_a_thousandth(layer: str, tmp_path: Path) -> None:
    """Scaling one layer's weight by 1.001 is caught at that layer's output, even where the next
    BatchNorm would hide it from the logits."""
    path = golden_path("ConvNet", "DigitsDataModule", "cpu")
    assert path.is_file(), "run test_regress_one_training_step first (or --regen-regress)"
    expected = json.loads(path.read_text())

    def scale(model: nn.Module) -> None:
        weight = model.get_submodule(layer).weight
        assert isinstance(weight, Tensor)
        with torch.no_grad():
            weight.mul_(1.001)

    record = one_step("ConvNet", "DigitsDataModule", "cpu", tmp_path, before_step=scale)
    moved, _ = differences({"outputs": expected["outputs"]}, {"outputs": record["outputs"]})
    assert any(line.startswith(f"outputs/{layer}:") for line in moved), moved
    with pytest.raises(pytest.fail.Exception, match=rf"outputs/{layer}: mean .*moved .* of its spread"):
        compare(path, record, regen=False)


class StepLosses(pl.Callback):
    """Records each training step's loss and stops the run after `steps` of them."""

    steps = 5

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, _: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))
        if len(self.losses) >= self.steps:
            trainer.should_stop = True  # mid-epoch: the LR schedule stays that of the full demo run


# The first five training losses of `make demo` (configs/digits.yaml, seed 42, its full 30-epoch
# one-cycle schedule), on CPU. Tolerance 1e-4 absolute: the same code differs only by float32 rounding
# between thread counts and CPUs (1 vs 2 threads: 3e-7 here), while a real change moves these losses
# by 1e-2 or more (another seed's initialization and batches: 0.12 on the first step).
# They are kept in tests/regress/cpu/digits_demo_losses.json, rewritten by --regen-regress.
LOSSES_FILE = GOLDEN / "cpu" / "digits_demo_losses.json"
LOSS_TOLERANCE = 1e-4


def test_regress_golden_losses_of_the_digits_demo(runs_dir: Path, regen_regress: bool) -> None:
    args = [
        "fit",
        "--config",
        str(CONFIGS / "digits.yaml"),
        "--trainer.callbacks+=tests.test_regress.StepLosses",
        "--trainer.limit_val_batches",
        "1",
        # CSV only: the losses do not depend on the loggers, and an offline W&B run costs seconds.
        "--trainer.logger=[{class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: .}}]",
        "--test_after_fit",
        "false",
    ]
    cli = main(cli_args(*args, runs_dir=runs_dir))
    assert cli is not None
    (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, StepLosses)]  # type: ignore[attr-defined]
    if regen_regress:
        LOSSES_FILE.parent.mkdir(parents=True, exist_ok=True)
        LOSSES_FILE.write_text(json.dumps({"losses": recorder.losses}, indent=1) + "\n")
        return
    golden = json.loads(LOSSES_FILE.read_text())["losses"]
    assert len(recorder.losses) == len(golden)
    for step, (got, want) in enumerate(zip(recorder.losses, golden, strict=True)):
        assert abs(got - want) <= LOSS_TOLERANCE, (
            f"training loss of step {step} moved from {want:.7f} to {got:.7f} (tolerance {LOSS_TOLERANCE}); "
            "if intended, regenerate with `pytest -k regress --regen-regress`"
        )
