"""`acc` is one metric everywhere: top-1 accuracy over samples, whichever route builds it."""

from __future__ import annotations

import pytest
import torch

from examples.guide_example import ParityExample, TwoHeadMetrics, TwoHeadPrediction
from project.metrics import ClassificationMetrics, ConfiguredMetrics
from project.model import AutoencoderClassifier, ConvNet
from project.structs import Example, Prediction


def imbalanced() -> tuple[Example, Prediction]:
    """9 of class 0, all right; 1 of class 1, wrong: 90 % of samples right, 50 % mean per-class."""
    labels = torch.tensor([0] * 9 + [1])
    logits = torch.zeros(10, 3)
    logits[:, 0] = 1.0
    return Example(torch.zeros(10, 1, 2, 2), labels, torch.arange(10)), Prediction(logits)


def test_acc_is_the_same_metric_through_every_route() -> None:
    example, prediction = imbalanced()
    declared = [{"name": "acc", "fn": "accuracy", "prediction": "logits", "target": "label"}]
    routes = {
        "built-in": ClassificationMetrics(3, prefix="val/"),
        "config shortcut": ConfiguredMetrics(declared, 3, Example, Prediction, prefix="val/"),  # type: ignore[arg-type]
        "model default": ConvNet(3, (1, 2, 2)).create_metrics("val/"),
        "model with declared metrics": AutoencoderClassifier(3, (1, 8, 8), metrics=declared).create_metrics(
            "val/"
        ),
    }
    for route, metrics in routes.items():
        metrics.update_from(example, prediction)
        assert float(metrics.compute()["val/acc"]) == pytest.approx(0.9), route  # micro; macro: 0.5
    # The worked example's own collection (examples/guide_example.py) too.
    two_heads = TwoHeadMetrics(3, prefix="val/")
    parity = example.require_label() % 2
    two_heads.update_from(
        ParityExample(example.image, example.label, example.index, parity=parity),
        TwoHeadPrediction(prediction.logits, parity_logits=torch.zeros(10, 2)),
    )
    assert float(two_heads.compute()["val/acc"]) == pytest.approx(0.9)
