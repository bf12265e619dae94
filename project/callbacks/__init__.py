"""Callbacks, switched on in configs: the visualizations (top_k.py, uncertainty.py, confusion.py on
`EpochCallback` in base.py, drawing through visual_log.py and display.py), the writers of
metrics.json, run.json, metadata.json and predictions.csv, and the guards of a run (rng_state.py,
nonfinite_loss.py) and the throughput/MFU logger (throughput.py)."""

from project.callbacks.base import EpochCallback
from project.callbacks.confusion import ConfusionMatrix
from project.callbacks.ema import EMA
from project.callbacks.metrics_file import FinalMetricsFile
from project.callbacks.moved_run import MovedRunDir
from project.callbacks.nonfinite_loss import NonFiniteLossGuard
from project.callbacks.prediction_writer import PredictionWriter
from project.callbacks.rng_state import RNGState
from project.callbacks.run_metadata import RunMetadata
from project.callbacks.run_status import RunStatus
from project.callbacks.throughput import Throughput
from project.callbacks.top_k import TopKExamples
from project.callbacks.uncertainty import UncertaintyPlots
from project.callbacks.visual_log import VisualLog

__all__ = [
    "EMA",
    "ConfusionMatrix",
    "EpochCallback",
    "FinalMetricsFile",
    "MovedRunDir",
    "NonFiniteLossGuard",
    "PredictionWriter",
    "RNGState",
    "RunMetadata",
    "RunStatus",
    "Throughput",
    "TopKExamples",
    "UncertaintyPlots",
    "VisualLog",
]
