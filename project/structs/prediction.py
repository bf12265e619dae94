"""`Prediction`: what a model's `forward` returns.

Only `logits` is stored; everything else is derived on demand, on the logits' device, with no
host sync::

    pred = model(example)
    pred.probs        # (B, K) softmax
    pred.pred         # (B,)   argmax class
    pred.confidence   # (B,)   max probability
    pred.entropy      # (B,)   predictive entropy in nats, 0 .. log(K)

Add fields for extra heads (e.g. a reconstruction) and derived views as properties.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Prediction:
    logits: Tensor
    """(B, K) unnormalized class scores."""

    def __len__(self) -> int:
        return self.logits.shape[0]

    @property
    def probs(self) -> Tensor:
        return self.logits.float().softmax(dim=-1)

    @property
    def pred(self) -> Tensor:
        return self.logits.argmax(dim=-1)

    @property
    def confidence(self) -> Tensor:
        return self.probs.amax(dim=-1)

    @property
    def entropy(self) -> Tensor:
        log_probs = self.logits.float().log_softmax(dim=-1)
        # p * log p with p = 0 is 0; exp(-inf) * -inf would be nan, so zero those terms explicitly.
        return -(log_probs.exp() * log_probs).nan_to_num(nan=0.0).sum(dim=-1)
