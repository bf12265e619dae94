"""`ExampleMetrics`: a torchmetrics `MetricCollection` that BaseModel feeds with whole structs.

BaseModel calls `update_from(example, prediction)` at every step, and at each epoch's end logs
`compute()` (synced across DDP ranks by torchmetrics) and resets. A subclass routes the fields each
metric needs::

    class ParityMetrics(ExampleMetrics):
        def __init__(self, prefix: str = ""):
            super().__init__({"parity_acc": BinaryAccuracy()}, prefix=prefix, compute_groups=False)

        def update_from(self, example, prediction):
            self["parity_acc"].update(prediction.parity_logits.argmax(-1), example.parity)
"""

from __future__ import annotations

from torchmetrics import MetricCollection

from project.structs import Example, Prediction


class ExampleMetrics(MetricCollection):
    def update_from(self, example: Example, prediction: Prediction) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement update_from(example, prediction)")
