"""Callbacks: optional pieces of the pipeline (logging, writing outputs), switched on in configs.

Add a callback: a new file here with a `pytorch_lightning.Callback` subclass, exported below, then
list it under `trainer.callbacks` in `configs/defaults.yaml` or a run's config.
"""

from project.callbacks.prediction_writer import PredictionWriter

__all__ = ["PredictionWriter"]
