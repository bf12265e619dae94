"""`TrialReport`: inside a trial's fit, report the objective to the study every validation epoch, and stop
the fit cleanly when the study's pruner says the trial is not worth finishing.

Why not optuna-integration's PyTorchLightningPruningCallback: it raises `TrialPruned` out of the
Trainer, so a pruned trial ends without its last checkpoint, metrics.json and plots. Here the Trainer
stops as after its last epoch (`should_stop`), and the `tune` process marks the trial pruned.

Outside a sweep (no study in the environment, e.g. `fit --config runs/<study>/best.yaml`) it does
nothing, so a trial's config.yaml repeats the trial as a plain fit.
"""

from __future__ import annotations

import math

import optuna
import pytorch_lightning as pl

from project.errors import UserError
from project.sweep.child import MISSING, PRUNED_AT, trial_context
from project.sweep.space import make_pruner
from project.sweep.storage import open_storage


class TrialReport(pl.Callback):
    """Reports the sweep's objective each validation epoch and stops a trial the pruner prunes."""

    def __init__(self) -> None:
        self.context = trial_context()
        self.trial: optuna.trial.Trial | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.context is None or not trainer.is_global_zero or self.trial is not None:
            return  # rank 0 alone talks to the study; the others follow its decision
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.context["storage"])
        study = optuna.load_study(study_name=self.context["study"], storage=storage)
        study.pruner = make_pruner(study.user_attrs["pruner"])
        self.trial = optuna.trial.Trial(study, self.context["trial_id"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.context is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        prune = False
        if self.trial is not None:
            prune = self._report(trainer)
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            trainer.should_stop = True

    def _report(self, trainer: pl.Trainer) -> bool:
        assert self.trial is not None and self.context is not None
        objective = self.context["objective"]
        logged_value = trainer.callback_metrics.get(objective)
        if logged_value is None:
            logged = sorted(k for k in trainer.callback_metrics if not k.endswith(("_step", "_epoch")))
            self.trial.set_user_attr(MISSING, logged)
            raise UserError(
                f"the objective {objective} is never logged by this run; it logs {', '.join(logged)}: set "
                "`objective:` in the search file to one of them"
            )
        value = float(logged_value)
        if math.isnan(value):
            return False  # Optuna skips NaN reports; the trial fails when it ends on one
        self.trial.report(value, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_AT, trainer.current_epoch)
            return True
        return False
