"""Example, Prediction and Loss: batching, derived values, device moves, validation."""

from __future__ import annotations

import math

import pytest
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader

from project.structs import Example, Loss, Prediction


def sample(i: int, label: bool = True) -> Example:
    return Example(
        image=torch.full((1, 2, 2), float(i)),
        label=torch.tensor(i % 3) if label else None,
        index=torch.tensor(i),
    )


def test_collate_stacks_every_field() -> None:
    batch = Example.collate([sample(i) for i in range(4)])
    assert batch.image.shape == (4, 1, 2, 2)
    assert batch.label is not None and batch.label.tolist() == [0, 1, 2, 0]
    assert batch.index is not None and batch.index.tolist() == [0, 1, 2, 3]
    assert len(batch) == 4


def test_collate_without_labels_gives_none() -> None:
    batch = Example.collate([sample(0, label=False), sample(1, label=False)])
    assert batch.label is None
    with pytest.raises(ValueError, match="no labels"):
        batch.require_label()


def test_collate_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no samples"):
        Example.collate([])


def test_dataloader_yields_examples() -> None:
    samples = [sample(i) for i in range(5)]
    loader: DataLoader[Example] = DataLoader(
        samples,  # type: ignore[arg-type]  # a list is a map-style dataset at runtime; the stubs want a Dataset
        batch_size=2,
        collate_fn=Example.collate,
    )
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert all(isinstance(b, Example) for b in batches)


def test_lightning_moves_structs_to_device_as_they_are() -> None:
    """Lightning's own transfer function walks the dataclass fields: no `.to()` plumbing needed."""
    batch = Example.collate([sample(i) for i in range(3)])
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, Example)
    assert moved.image.is_meta and moved.label is not None and moved.label.is_meta
    assert batch.image.device.type == "cpu"  # the original is untouched
    pred = move_data_to_device(Prediction(torch.zeros(3, 4)), torch.device("meta"))
    assert isinstance(pred, Prediction) and pred.logits.is_meta


def test_pin_memory_keeps_type_and_values() -> None:
    batch = Example.collate([sample(i) for i in range(3)])
    if not torch.cuda.is_available():
        pytest.skip("pinning memory needs a CUDA device")
    pinned = batch.pin_memory()
    assert isinstance(pinned, Example) and pinned.image.is_pinned()
    assert torch.equal(pinned.image, batch.image)


def test_prediction_derived_values() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 5.0, 1.0]])
    pred = Prediction(logits)
    expected_probs = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(pred.probs, expected_probs)
    assert pred.pred.tolist() == [0, 0, 1]
    torch.testing.assert_close(pred.confidence, expected_probs.max(dim=-1).values)
    manual_entropy = -(expected_probs * expected_probs.log()).sum(dim=-1)
    torch.testing.assert_close(pred.entropy, manual_entropy)
    assert pred.entropy[1].item() == pytest.approx(math.log(3))  # uniform: the maximum, log K


def test_entropy_of_a_certain_prediction_is_zero_not_nan() -> None:
    pred = Prediction(torch.tensor([[0.0, float("-inf")], [1000.0, -1000.0]]))
    assert torch.isfinite(pred.entropy).all()
    torch.testing.assert_close(pred.entropy, torch.zeros(2), atol=1e-6, rtol=0)


def test_loss_total_weights_and_log_dict() -> None:
    loss = Loss({"ce": torch.tensor(2.0), "mse": torch.tensor(3.0)}, weights={"mse": 0.5})
    assert loss.total.item() == pytest.approx(2.0 + 0.5 * 3.0)
    logged = loss.log_dict("train")
    assert set(logged) == {"train/loss", "train/loss/ce", "train/loss/mse"}
    assert logged["train/loss/mse"].item() == 3.0  # terms are logged unweighted
    assert set(Loss({"ce": torch.tensor(2.0)}).log_dict("val")) == {"val/loss"}  # the total is the term
    weighted = Loss({"ce": torch.tensor(2.0)}, weights={"ce": 0.5}).log_dict("val")
    assert {k: v.item() for k, v in weighted.items()} == {"val/loss": 1.0, "val/loss/ce": 2.0}


def test_loss_total_backpropagates_weighted_gradients() -> None:
    w = torch.tensor(1.0, requires_grad=True)
    Loss({"a": w * 2, "b": w * 3}, weights={"b": 10.0}).total.backward()
    assert w.grad is not None and w.grad.item() == pytest.approx(2 + 30)


def test_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"unknown terms \['typo'\].*\['ce'\]"):
        Loss({"ce": torch.tensor(1.0)}, weights={"typo": 1.0})
    with pytest.raises(ValueError, match="must be a scalar"):
        Loss({"ce": torch.ones(3)})
    with pytest.raises(ValueError, match="at least one term"):
        Loss({})
