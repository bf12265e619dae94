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
from typing import Literal

from project.errors import UserError

# Lightning's DDP launcher re-runs the command in child processes that inherit the environment:
# rank 0 publishes its run directory here so every rank writes to the same one.
RUN_DIR_ENV = "PROJECT_RUN_DIR"
Resume = Literal["never", "last", "auto"]


def launcher_rank() -> int:
    """This process's global rank when an outside launcher (torchrun, SLURM) started it, else 0."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def launcher_run_id() -> str | None:
    """A name every process of a torchrun or SLURM job shares: the rendezvous id or the job id."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return run_id
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm{job}" if job else None


def launcher_world_size() -> int:
    """How many processes an outside launcher (torchrun, SLURM) started for this job; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def resolve_run_dir(root: Path, name: str | None, parts: list[str], resume: Resume) -> tuple[Path, bool]:
    """Pick the run directory; returns it and whether this run continues an earlier one there.

    Args:
        root: parent of all run directories (`runs/` or --trainer.default_root_dir).
        name: --run_name. None names the run `<timestamp>-<parts>` (made unique), or
            `<parts>-<job id>` under torchrun/SLURM, where every process must arrive at one name.
        parts: what the run is, e.g. ["convnet"] or ["convnet", "test"].
        resume: "last" continues the existing run `root/name`; "auto" continues it when it has a
            checkpoints/last.ckpt and starts it otherwise; "never" starts a new run.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited), resume != "never"
    if name is None and launcher_world_size() > 1:
        # Processes started by torchrun/SLURM compute their names separately: they must agree.
        job = launcher_run_id()
        if job is None:
            raise UserError(
                "this process was started by a multi-process launcher without a job id: pass the same "
                "--run_name to every process (or torchrun --rdzv_id NAME)"
            )
        name = "-".join([*parts, job])
    if resume != "never" and name is None:
        raise UserError(
            f"--ckpt_path last and --resume auto continue a named run: add --run_name NAME (the folder under "
            f"{root}/ to resume), or pass the checkpoint file itself as --ckpt_path"
        )
    if name is not None:
        run_dir = root / name
        if launcher_rank() != 0:
            return run_dir, resume != "never"  # rank 0 creates it and checks it; the others only write to it
        if resume == "last":
            if not run_dir.is_dir():
                raise UserError(f"cannot resume run {name!r}: {run_dir} does not exist")
            return run_dir, True
        if resume == "auto":
            run_dir.mkdir(parents=True, exist_ok=True)
            return run_dir, (run_dir / "checkpoints" / "last.ckpt").is_file()
        if run_dir.exists():
            raise UserError(
                f"run directory {run_dir} already exists and is left untouched; choose another --run_name, "
                "or add --ckpt_path last (or --resume auto) to resume that run"
            )
        run_dir.mkdir(parents=True)
        return run_dir, False
    root.mkdir(parents=True, exist_ok=True)
    default_name = timestamped_name(*parts)
    for attempt in range(1000):
        run_dir = root / (default_name if attempt == 0 else f"{default_name}-{attempt + 1}")
        try:
            run_dir.mkdir()  # atomic: two runs started in the same second get different folders
            return run_dir, False
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run directory under {root}")


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run already in `run_dir`, so a resumed run continues it instead of starting
    another: W&B names run folders `[offline-]run-<date>_<time>-<id>`."""
    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def timestamped_name(*parts: str) -> str:
    return "-".join([time.strftime("%Y%m%d-%H%M%S"), *parts])
