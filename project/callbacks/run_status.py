"""`RunStatus`: `run.json` in the run directory (the Trainer's `default_root_dir`) says whether the
run is going, finished or failed, since when and for how long; `python -m project runs` reads it.

    {"command": "fit", "status": "finished", "started": "2026-12-02T19:38:42+00:00",
     "updated": "2026-12-02T19:39:05+00:00", "ended": "2026-12-02T19:39:05+00:00",
     "wall_s": 23.1, "epochs": 10, "segments": 1, "error": null}

status: "running" from the start of the command through each of its stages (a fit's test after it
included), then "finished", "failed" (with the first line of the exception as `error`) or
"interrupted" (Ctrl-C, SIGTERM). A run killed outright (SIGKILL, out of memory, a lost node) cannot say
so: its file stays "running", and `runs` tells it from a live one by the run directory's `.lock`,
which the operating system releases when the holder dies.

`wall_s` is the time spent in the Trainer (from its setup to the end of the last stage, the test
after a fit included; the command's start-up before it, imports and parsing, is left out). A resumed
run (a later command in the same directory, e.g. --resume auto after a kill) keeps the first `started`,
counts `segments`, and adds up the segments' times rather than taking first start to last end: the
hours a killed job waited in a queue before its restart are no training time. A killed segment counts
up to its last `updated`, rewritten at each epoch's end and at least every HEARTBEAT_S seconds.

Only rank 0 writes (under DDP too), to a temporary file renamed over the old one.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from project.files import atomic_write
from project.run_dir import holds_nothing_but_its_lock

HEARTBEAT_S = 60.0
# How a run stopped on purpose ends (Ctrl-C; SLURM's or a scheduler's SIGTERM, Lightning's SIGTERMException).
INTERRUPTIONS = ("KeyboardInterrupt", "SIGTERMException")


class RunStatus(pl.Callback):
    """Keeps run.json in the run directory up to date: the command's status, start, end and wall time."""

    def __init__(self, filename: str = "run.json") -> None:
        self.filename = filename
        self._record: dict[str, Any] | None = None  # None until this process's first stage starts
        self._segment_start = 0.0  # time.monotonic() at that start
        self._earlier_wall_s = 0.0  # the wall time of the run's earlier segments (before a resume)
        self._last_write = 0.0
        # The stage whose end finishes the command, when another follows the first in this process:
        # the CLI sets "test" for a fit with its test after it (a run killed between the two is not
        # finished: `cv` would count a fold without test metrics). None: any stage's end.
        self.last_stage: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._record is None:
            self._start(trainer)
        else:  # a later stage of the same command (the test after a fit): running again
            self._write(trainer, "running")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning counts the epoch as done only after this hook: current_epoch is still its index.
        self._write(trainer, "running", epochs=trainer.current_epoch + 1)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if time.monotonic() - self._last_write >= HEARTBEAT_S:
            self._write(trainer, "running")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning calls teardown only when the stage succeeded (on_exception otherwise).
        if self.last_stage in (None, stage):
            self._write(trainer, "finished", ended=True, epochs=_fit_epochs(trainer))
        else:
            self._write(trainer, "running", epochs=_fit_epochs(trainer))

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._record is None:  # failed before this callback's setup (e.g. the data's download)
            # A run that never started writes nothing: its empty directory is then removed
            # (run_dir.forgetting_run_dir). A resumed run's directory holds files: it gets "failed".
            root = Path(trainer.default_root_dir)
            if not root.is_dir() or holds_nothing_but_its_lock(root):
                return
            self._start(trainer)
        status = "interrupted" if type(exception).__name__ in INTERRUPTIONS else "failed"
        lines = str(exception).strip().splitlines()
        error = f"{type(exception).__name__}: {lines[0]}" if lines else type(exception).__name__
        self._write(trainer, status, ended=True, error=error, epochs=_fit_epochs(trainer))

    def _start(self, trainer: pl.Trainer) -> None:
        """Begin this process's segment, carrying over what an earlier segment in the same directory
        recorded."""
        self._segment_start = time.monotonic()
        now = _now()
        earlier = self._read(trainer)
        self._earlier_wall_s = float(earlier.get("wall_s") or 0.0)
        self._record = {
            "command": earlier.get("command") or str(getattr(trainer.state.fn, "value", trainer.state.fn)),
            "started": earlier.get("started") or now,
            "segments": int(earlier.get("segments") or 0) + 1,
            "epochs": earlier.get("epochs"),
        }
        self._write(trainer, "running")

    def _write(
        self,
        trainer: pl.Trainer,
        status: str,
        ended: bool = False,
        error: str | None = None,
        epochs: int | None = None,  # None: as before
    ) -> None:
        if self._record is None or not trainer.is_global_zero:
            return
        self._last_write = time.monotonic()
        now = _now()
        if epochs is not None:
            self._record["epochs"] = epochs
        self._record |= {
            "status": status,
            "updated": now,
            "ended": now if ended else None,
            "wall_s": round(self._earlier_wall_s + self._last_write - self._segment_start, 3),
            "error": error,
        }
        with atomic_write(Path(trainer.default_root_dir) / self.filename) as f:
            f.write(json.dumps(self._record, indent=2, sort_keys=True) + "\n")

    def _read(self, trainer: pl.Trainer) -> dict[str, Any]:
        path = Path(trainer.default_root_dir) / self.filename
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError):  # none yet (a new run), or unreadable: start afresh
            return {}
        return earlier if isinstance(earlier, dict) else {}


def _fit_epochs(trainer: pl.Trainer) -> int | None:
    """The epochs a fit has completed (a test or validate command trains none)."""
    return trainer.current_epoch if trainer.state.fn == TrainerFn.FITTING else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
