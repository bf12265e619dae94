"""The README's "Make it yours" guide, followed end to end: a two-head model on digits.

Besides the digit, the model predicts its parity (odd or even) from the same features, trained with
a second, weighted loss term. Each section is one step of the guide; in your own project each would
be its own file under project/ (structs/, data/, metrics/, model/, callbacks/), and the config
(examples/guide_example.yaml) would live in configs/. tests/test_guide_example.py runs it on every
`make test`, so the guide cannot rot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import BinaryAccuracy

from project.callbacks import EpochCallback, VisualLog
from project.data import DigitsDataModule
from project.data.dataset import ImageDataset
from project.metrics import ExampleMetrics, build_metric
from project.model import ConvNet
from project.structs import Example, Loss, Prediction

# ---- step 3: structs with the fields the new task needs -------------------------------------------


@dataclass
class ParityExample(Example):
    parity: Tensor | None = None
    """(B,) 1 for an odd digit, 0 for an even one."""


@dataclass
class TwoHeadPrediction(Prediction):
    parity_logits: Tensor | None = None
    """(B, 2) scores of the parity head."""

    def require_parity_logits(self) -> Tensor:
        if self.parity_logits is None:
            raise ValueError("this prediction has no parity head output")
        return self.parity_logits


# ---- step 2: a dataset that fills the new field ---------------------------------------------------


class ParityDataset(ImageDataset):
    def __getitem__(self, i: int) -> ParityExample:
        example = super().__getitem__(i)
        parity = None if example.label is None else example.label % 2
        return ParityExample(image=example.image, label=example.label, index=example.index, parity=parity)


class ParityDigits(DigitsDataModule):
    dataset_class = ParityDataset


# ---- step 5: a metric fed by the new fields --------------------------------------------------------


class TwoHeadMetrics(ExampleMetrics):
    def __init__(self, num_classes: int, prefix: str = "") -> None:
        # compute_groups=False: each metric gets its own inputs, so none can share state.
        super().__init__(
            {"acc": build_metric("accuracy", num_classes), "parity_acc": BinaryAccuracy()},
            prefix=prefix,
            compute_groups=False,
        )

    def update_from(self, example: Example, prediction: Prediction) -> None:
        assert isinstance(example, ParityExample) and isinstance(prediction, TwoHeadPrediction)
        self["acc"].update(prediction.logits, example.require_label())
        self["parity_acc"].update(prediction.require_parity_logits().argmax(-1), example.parity)


# ---- step 4: a model variant: ConvNet's layers plus one head ---------------------------------------


class TwoHeadNet(ConvNet):
    def __init__(
        self, num_classes: int, in_shape: tuple[int, int, int], parity_weight: float = 0.5, **kwargs: Any
    ) -> None:
        """
        Args:
            parity_weight: weight of the parity loss term against the digit cross-entropy.
            **kwargs: ConvNet's layer sizes and BaseModel's optimizer settings.
        """
        super().__init__(num_classes, in_shape, **kwargs)
        self.parity_weight = parity_weight
        self.parity_head = nn.Linear(self.flat_features(self.features, self.in_shape), 2)

    def forward(self, example: Example) -> TwoHeadPrediction:
        features = self.features(example.image)
        return TwoHeadPrediction(logits=self.classifier(features), parity_logits=self.parity_head(features))

    def compute_loss(self, example: Example, prediction: Prediction) -> Loss:
        assert isinstance(example, ParityExample) and isinstance(prediction, TwoHeadPrediction)
        assert example.parity is not None
        return Loss(
            {
                "ce": F.cross_entropy(prediction.logits, example.require_label()),
                "parity": F.cross_entropy(prediction.require_parity_logits(), example.parity),
            },
            weights={"parity": self.parity_weight},
        )

    def create_metrics(self, prefix: str) -> ExampleMetrics:
        return TwoHeadMetrics(self.num_classes, prefix=prefix)


# ---- step 6: a callback over each validation epoch --------------------------------------------------


class ParityDisagreement(EpochCallback):
    """Counts samples whose two heads disagree: digit head says odd, parity head says even, or back."""

    def reset(self, pl_module: pl.LightningModule) -> None:
        self.count = torch.zeros((), dtype=torch.long, device=pl_module.device)

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        assert isinstance(prediction, TwoHeadPrediction)
        self.count += (prediction.pred % 2 != prediction.require_parity_logits().argmax(-1)).sum()

    def emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog) -> None:
        gathered = pl_module.all_gather(self.count)  # every rank's count
        assert isinstance(gathered, Tensor)  # a tensor in, a tensor out
        total = gathered.sum()
        out.scalar("parity_disagreement", float(total))
