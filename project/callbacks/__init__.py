"""Callbacks: optional pieces of the pipeline (visualizations, writers), switched on in configs.

Add a callback: a new file here with a `pytorch_lightning.Callback` subclass (or an `EpochCallback`
for something computed over a validation/test epoch), exported below, then listed under
`trainer.callbacks` in a config (`callbacks+:` appends to the list from configs/defaults.yaml).
"""

from project.callbacks.base import EpochCallback
from project.callbacks.confusion import ConfusionMatrix
from project.callbacks.nonfinite_loss import NonFiniteLossGuard
from project.callbacks.prediction_writer import PredictionWriter
from project.callbacks.rng_state import RNGState
from project.callbacks.top_k import TopKExamples
from project.callbacks.uncertainty import UncertaintyPlots
from project.callbacks.visual_log import VisualLog

__all__ = [
    "ConfusionMatrix",
    "EpochCallback",
    "NonFiniteLossGuard",
    "PredictionWriter",
    "RNGState",
    "TopKExamples",
    "UncertaintyPlots",
    "VisualLog",
]
