"""Run directories: one per run under `runs/`, shared by every process of that run.

    runs/20261123-171502-convnet/
        config.yaml        resolved config (config.<stage>.N.yaml for later stages run in the same dir)
        split.json         the train/val split, reusable with --data.split_file
        checkpoints/       best-epochNNN.ckpt and last.ckpt
        csv/version_0/     metrics.csv: every logged value (CSVLogger); a resumed run adds version_1
        metrics.json       final validation/test metrics
        plots/             visualizations per stage and epoch (PNG + JSON)
        predictions.csv    from `predict`
        wandb/             the offline W&B run (`wandb sync` uploads it)

The folder is named `<timestamp>-<model>` unless --run_name says otherwise.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from project.errors import UserError

# Lightning's DDP launcher re-runs the command in child processes that inherit the environment:
# rank 0 publishes its run directory here so every rank writes to the same one.
RUN_DIR_ENV = "PROJECT_RUN_DIR"


def resolve_run_dir(root: Path, name: str | None, default_name: str, resume: bool) -> tuple[Path, bool]:
    """Pick the run directory; returns it and whether this call created it.

    Args:
        root: parent of all run directories (`runs/` or --trainer.default_root_dir).
        name: --run_name; None picks `default_name` (made unique).
        default_name: timestamped name used when `name` is None.
        resume: continue in the existing directory `root/name` (--ckpt_path last).
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited), False
    if resume:
        if name is None:
            raise UserError(
                "--ckpt_path last resumes a named run: add --run_name NAME (the folder under "
                f"{root}/ to resume), or pass the checkpoint file itself as --ckpt_path"
            )
        run_dir = root / name
        if not run_dir.is_dir():
            raise UserError(f"cannot resume run {name!r}: {run_dir} does not exist")
        return run_dir, False
    if name is not None:
        run_dir = root / name
        if run_dir.exists():
            raise UserError(
                f"run directory {run_dir} already exists and is left untouched; choose another --run_name, "
                "or add --ckpt_path last to resume that run"
            )
        run_dir.mkdir(parents=True)
        return run_dir, True
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        run_dir = root / (default_name if attempt == 0 else f"{default_name}-{attempt + 1}")
        try:
            run_dir.mkdir()  # atomic: two runs started in the same second get different folders
            return run_dir, True
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run directory under {root}")


def timestamped_name(*parts: str) -> str:
    return "-".join([time.strftime("%Y%m%d-%H%M%S"), *parts])
