"""Model variants: output shapes, loss, one step lowers the loss, optimizers/schedulers, checkpoints."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from project.model import BaseModel, CifarResNet, ConvNet, FastCifarNet
from project.structs import Example, Loss, Prediction

VARIANTS: list[tuple[type[BaseModel[Any, Any]], dict[str, Any], tuple[int, int, int]]] = [
    (ConvNet, {}, (1, 8, 8)),
    (ConvNet, {"channels": (8, 16, 32), "hidden": (32, 16)}, (3, 32, 32)),
    (ConvNet, {"channels": (4,)}, (3, 5, 7)),  # odd sizes
    (CifarResNet, {}, (3, 32, 32)),
    (FastCifarNet, {"widths": (8, 16, 16), "logit_scale": 1.0, "label_smoothing": 0.2}, (3, 32, 32)),
]


def batch(in_shape: tuple[int, int, int], n: int = 8, num_classes: int = 10) -> Example:
    gen = torch.Generator().manual_seed(0)
    return Example(
        image=torch.randn(n, *in_shape, generator=gen),
        label=torch.randint(0, num_classes, (n,), generator=gen),
        index=torch.arange(n),
    )


@pytest.mark.parametrize(("cls", "kwargs", "in_shape"), VARIANTS)
def test_forward_and_loss_shapes(
    cls: type[BaseModel[Any, Any]], kwargs: dict[str, Any], in_shape: Any
) -> None:
    model = cls(num_classes=7, in_shape=in_shape, **kwargs)
    example = batch(in_shape, n=4, num_classes=7)
    prediction = model(example)
    assert isinstance(prediction, Prediction)
    assert prediction.logits.shape == (4, 7)
    loss = model.compute_loss(example, prediction)
    assert isinstance(loss, Loss) and set(loss.terms) == {"ce"}
    assert loss.total.ndim == 0 and torch.isfinite(loss.total)


@pytest.mark.parametrize(("cls", "kwargs", "in_shape"), VARIANTS)
def test_one_step_lowers_loss_on_a_fixed_batch(
    cls: type[BaseModel[Any, Any]], kwargs: dict[str, Any], in_shape: Any
) -> None:
    torch.manual_seed(0)
    model = cls(num_classes=10, in_shape=in_shape, **kwargs)
    example = batch(in_shape)
    # A small step: to first order it must lower the loss along the gradient.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.eval()  # no dropout/batch-statistics noise: the comparison is about the update alone
    before = model.compute_loss(example, model(example)).total
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = model.compute_loss(example, model(example)).total
    assert after < before


def test_base_model_without_forward_says_what_to_implement() -> None:
    model: BaseModel[Example, Prediction] = BaseModel(num_classes=3, in_shape=(1, 4, 4))
    with pytest.raises(NotImplementedError, match="must implement forward"):
        model(batch((1, 4, 4), num_classes=3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": partial(torch.optim.AdamW, lr=-0.1)}, "optimizer: Invalid learning rate: -0.1"),
        ({"optimizer": partial(torch.optim.SGD, weight_decay=-1.0)}, "optimizer: Invalid weight_decay value"),
        (
            {"scheduler": partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, pct_start=2.0)},
            "scheduler: Expected float",
        ),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"num_classes": 1}, "num_classes must be at least 2"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"num_classes": 10, "in_shape": (1, 8, 8)} | kwargs
    with pytest.raises(ValueError, match=message):
        ConvNet(**args)


def test_label_smoothing_changes_the_loss() -> None:
    example = batch((1, 8, 8))
    torch.manual_seed(0)
    plain = ConvNet(10, (1, 8, 8)).eval()
    torch.manual_seed(0)
    smooth = ConvNet(10, (1, 8, 8), label_smoothing=0.2).eval()
    loss_plain = plain.compute_loss(example, plain(example)).total
    loss_smooth = smooth.compute_loss(example, smooth(example)).total
    assert not torch.isclose(loss_plain, loss_smooth)


def tiny_loader(n: int = 40, batch_size: int = 8) -> DataLoader[Example]:
    data = batch((1, 8, 8), n=n)
    samples = [Example(data.image[i], data.require_label()[i], torch.tensor(i)) for i in range(n)]
    # A list is a map-style dataset at runtime; torch's stubs want a Dataset subclass.
    return DataLoader(samples, batch_size=batch_size, collate_fn=Example.collate)  # type: ignore[arg-type]


def fit_tiny(model: BaseModel[Any, Any], tmp_path: Path, **trainer_kwargs: Any) -> pl.Trainer:
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **({"max_epochs": 2, "enable_checkpointing": False} | trainer_kwargs),
    )
    trainer.fit(model, train_dataloaders=tiny_loader(), val_dataloaders=tiny_loader(16))
    return trainer


OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": partial(torch.optim.SGD, momentum=0.9, nesterov=True)}
SCHEDULERS = {
    "onecycle": (partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01), "total_steps"),
    "cosine": (torch.optim.lr_scheduler.CosineAnnealingLR, "T_max"),
    "linear": (partial(torch.optim.lr_scheduler.LinearLR, end_factor=0.01), "total_iters"),
}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "linear", "none"])
@pytest.mark.slow  # trains for more than one epoch
def test_optimizer_and_schedule_span_the_trainer_run(tmp_path: Path, optimizer: str, scheduler: str) -> None:
    """The schedule length comes from the Trainer (5 batches x 3 epochs = 15 steps), not from config."""
    make_scheduler, length = SCHEDULERS.get(scheduler, (None, ""))
    model = ConvNet(10, (1, 8, 8), optimizer=OPTIMIZERS[optimizer], scheduler=make_scheduler)
    trainer = fit_tiny(model, tmp_path, max_epochs=3)
    opt = trainer.optimizers[0]
    assert type(opt).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[optimizer]
    if scheduler == "none":
        assert trainer.lr_scheduler_configs == []
        return
    (config,) = trainer.lr_scheduler_configs
    assert config.interval == "step"
    assert getattr(config.scheduler, length) == 15
    # Each has annealed to a small fraction of its starting or peak rate by the last step.
    peak = 0.01 if scheduler == "onecycle" else 1e-3
    assert opt.param_groups[0]["lr"] < 0.05 * peak


@pytest.mark.slow  # trains for more than one epoch
def test_training_logs_the_loss_and_every_metric(tmp_path: Path) -> None:
    trainer = fit_tiny(ConvNet(10, (1, 8, 8)), tmp_path)
    logged = set(trainer.callback_metrics)
    for stage in ("train", "val"):
        assert {f"{stage}/loss", f"{stage}/acc", f"{stage}/f1"} <= logged
        assert f"{stage}/loss/ce" not in logged  # a lone cross-entropy term is the total: logged once


@pytest.mark.slow  # trains for more than one epoch
def test_epoch_metrics_cover_exactly_that_epoch(tmp_path: Path) -> None:
    """val/acc after the last epoch is the accuracy of the final weights on the whole validation set:
    nothing carried over from the sanity check or the epoch before, nothing left out."""
    model = ConvNet(10, (1, 8, 8), optimizer=partial(torch.optim.AdamW, lr=0.01))
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=2,
    )  # fmt: skip
    # Validating on the training set: accuracy climbs every epoch, so any carry-over would show.
    trainer.fit(model, train_dataloaders=tiny_loader(), val_dataloaders=tiny_loader())
    model.eval()
    with torch.no_grad():
        batches = list(tiny_loader())
        correct = sum(int((model(b).pred == b.require_label()).sum()) for b in batches)
    expected = correct / sum(len(b) for b in batches)
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(expected, abs=1e-6)


class RecordedLosses(ConvNet):
    """Notes every training step's loss and batch size, and logs a probe on every step: Lightning writes
    the probe on the steps its loggers write."""

    def __init__(self) -> None:
        super().__init__(10, (1, 8, 8))
        self.steps: list[tuple[int, float, int]] = []  # (epoch, loss, batch size)

    def training_step(self, batch: Example, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.steps.append((self.current_epoch, float(loss.detach()), len(batch)))
        self.log("probe", float(len(self.steps)), on_step=True, on_epoch=False)
        return loss


@pytest.mark.slow  # trains for more than one epoch
def test_losses_are_logged_on_the_written_steps_and_as_epoch_means(tmp_path: Path) -> None:
    """The step loss is logged exactly on the steps Lightning's loggers write (every log_every_n_steps),
    with that step's value; train/loss and val/loss are the epoch's means over samples (batches of 8,
    8, ..., 4: a mean of batch means would differ)."""
    model = RecordedLosses()
    logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=2, logger=logger, log_every_n_steps=4,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    val = tiny_loader(20)
    trainer.fit(model, train_dataloaders=tiny_loader(44), val_dataloaders=val)  # 6 batches an epoch
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    probed = [(row["step"], float(row["probe"])) for row in rows if row["probe"]]
    written = [(row["step"], float(row["train/loss_step"])) for row in rows if row["train/loss_step"]]
    assert len(written) == 12 // 4 and [step for step, _ in written] == [step for step, _ in probed]
    for (_, probe), (_, value) in zip(probed, written, strict=True):
        assert value == pytest.approx(model.steps[int(probe) - 1][1], rel=1e-6)  # that step's own loss
    last_epoch = [(loss, n) for epoch, loss, n in model.steps if epoch == 1]
    assert [n for _, n in last_epoch] == [8, 8, 8, 8, 8, 4]
    expected = sum(loss * n for loss, n in last_epoch) / 44
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)
    model.eval()
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(model(b).logits, b.require_label(), reduction="sum")
            for b in val
        ]
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(sum(losses)) / 20, rel=1e-5)


def test_load_from_checkpoint_needs_no_arguments(tmp_path: Path) -> None:
    """Hyperparameters are plain values, so the safe weights_only loader restores the model alone."""
    model = ConvNet(10, (1, 8, 8), channels=(4, 8), hidden=(16,), optimizer=partial(torch.optim.SGD, lr=0.02))
    trainer = fit_tiny(model, tmp_path, max_epochs=1)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = ConvNet.load_from_checkpoint(path, weights_only=True)
    assert restored.hparams["channels"] == (4, 8)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], tensor, msg=name)
