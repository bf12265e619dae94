"""Chaos: SIGKILLs at random moments of a digits fit, each followed by the same `--resume auto`
command, beside one unbroken run of the same command.

    venv/bin/python benchmarks/chaos.py [--kills 5] [--epochs 6] [--seed 0] [--every-n-steps N] [--config C]

Each kill takes down the whole process group (trainer, W&B service, loader workers), as a
preempted job's end does, at a random training step, aimed in turn at a training step, a
validation, a checkpoint save and a W&B write (a probe callback, in both runs, says which phase the
run is in; W&B writes are seen as its file growing). Reported: kills survived (every restart
resumed and the last one finished), work redone per kill (steps run before the kill that were run
again after it; target <= 1 epoch, or <= N steps with --every-n-steps N), whether the final weights
equal the unbroken run's bit for bit (torch.equal), files left behind (temp files, checkpoints
the unbroken run does not have) and W&B runs per run directory (target 1; each part read back with
`wandb leet inspect`).

Default: 5 kills in a 6-epoch fit of 10 steps an epoch, once with last.ckpt written at epoch ends
only, once with it written every 3 steps too (what `make bench` prints), about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from _common import REPO, report

PHASE_FILE_ENV = "CHAOS_PHASE_FILE"
STEPS_PER_EPOCH = 10
AIMS = ("training step", "validation", "checkpoint save", "W&B write")


class PhaseProbe(pl.Callback):
    """Writes `<phase> <global step>` to $CHAOS_PHASE_FILE as the run goes; it changes nothing else."""

    def __init__(self) -> None:
        self.path = os.environ.get(PHASE_FILE_ENV)

    def _say(self, phase: str, trainer: pl.Trainer) -> None:
        if self.path:
            Path(self.path).write_text(f"{phase} {trainer.global_step}")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._say("training step", trainer)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._say("validation", trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Any) -> None:
        self._say("checkpoint save", trainer)  # the file is written right after this hook


def command(root: Path, name: str, epochs: int, every_n_steps: int, config: str) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "project",
        "fit",
        "--config",
        config,
        "--config",
        "configs/debug/limit.yaml",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.deterministic",
        "true",
        "--trainer.default_root_dir",
        str(root),
        "--run_name",
        name,
        "--resume",
        "auto",
        "--test_after_fit",
        "false",
        "--trainer.callbacks+=chaos.PhaseProbe",
    ]
    if every_n_steps:
        args += [
            "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
            "--trainer.callbacks.init_args.dirpath",
            "checkpoints",
            "--trainer.callbacks.init_args.filename",
            "last",
            "--trainer.callbacks.init_args.enable_version_counter",
            "false",
            "--trainer.callbacks.init_args.every_n_train_steps",
            str(every_n_steps),
        ]
    return args


def environment(phase_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # a W&B service of its own
    env |= {PHASE_FILE_ENV: str(phase_file), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "benchmarks"), env.get("PYTHONPATH", "")])
    return env


def phase(phase_file: Path) -> tuple[str, int]:
    try:
        name, step = phase_file.read_text().rsplit(" ", 1)
        return name, int(step)
    except (OSError, ValueError):
        return "starting", -1


def wandb_size(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in (run_dir / "wandb").glob("offline-run-*/*.wandb") if p.is_file())


def run_and_kill(
    args: list[str], env: dict[str, str], run_dir: Path, target_step: int, aim: str
) -> dict[str, Any]:
    """Start the command, SIGKILL its process group at the first moment of `aim` from `target_step` on."""
    phase_file = Path(env[PHASE_FILE_ENV])
    phase_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        args, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    landed, step, size, since = "", -1, -1, 0.0
    while process.poll() is None:
        now_phase, step = phase(phase_file)
        if step >= target_step:
            if aim == "W&B write":
                if size < 0:
                    size, since = wandb_size(run_dir), time.monotonic()
                elif wandb_size(run_dir) != size or time.monotonic() - since > 5:
                    landed = "W&B write" if wandb_size(run_dir) != size else now_phase
            elif now_phase == aim or (aim == "checkpoint save" and list(run_dir.glob("checkpoints/.*.tmp"))):
                landed = aim
        if landed:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    _, err = process.communicate(timeout=120)
    return {"returncode": process.returncode, "landed": landed, "step": step, "stderr": err.decode()[-2000:]}


def resume_step(run_dir: Path) -> int:
    last = run_dir / "checkpoints" / "last.ckpt"
    return int(torch.load(last, weights_only=True)["global_step"]) if last.is_file() else 0


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    return state


def wandb_runs(run_dir: Path) -> tuple[int, int, int]:
    """(distinct W&B run ids, parts, parts `wandb leet inspect` reads)."""
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    wandb_cli = Path(sys.executable).with_name("wandb")
    readable = 0
    for part in parts:
        inspect = [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(part)]
        out = subprocess.run(inspect, capture_output=True, text=True, timeout=120)
        with contextlib.suppress(json.JSONDecodeError):
            readable += out.returncode == 0 and isinstance(json.loads(out.stdout), dict)
    return len({p.name.rsplit("-", 1)[-1] for p in parts}), len(parts), readable


def left_behind(run_dir: Path, unbroken: Path) -> list[str]:
    temp = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp")]
    expected = {p.name for p in (unbroken / "checkpoints").iterdir()}
    extra = [f"checkpoints/{p.name}" for p in (run_dir / "checkpoints").iterdir() if p.name not in expected]
    return sorted(temp + extra)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every-n-steps", type=int, default=0, help="refresh last.ckpt every N steps too")
    parser.add_argument(
        "--root", type=Path, default=None, help="folder for the runs (default: a temp folder)"
    )
    parser.add_argument("--config", default="configs/digits.yaml", help="the experiment config to fit")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    total = args.epochs * STEPS_PER_EPOCH
    root = args.root or Path(tempfile.mkdtemp(prefix="chaos-"))
    env = environment(root / "phase")
    start = time.monotonic()

    unbroken = subprocess.run(
        command(root, "unbroken", args.epochs, args.every_n_steps, args.config),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if unbroken.returncode != 0:
        raise SystemExit(f"the unbroken run failed:\n{unbroken.stderr[-3000:]}")

    run_dir = root / "chaos"
    chaos = command(root, "chaos", args.epochs, args.every_n_steps, args.config)
    targets = sorted(rng.sample(range(1, total - STEPS_PER_EPOCH), args.kills))
    kills: list[dict[str, Any]] = []
    failures: list[str] = []
    for i, target in enumerate(targets):
        aim = AIMS[i % len(AIMS)]
        before = resume_step(run_dir)
        outcome = run_and_kill(chaos, env, run_dir, max(target, before), aim)
        if outcome["returncode"] != -signal.SIGKILL:
            if outcome["returncode"] != 0:
                failures.append(outcome["stderr"])
            break  # it finished (or failed) before the kill
        after = resume_step(run_dir)
        kills.append(
            {
                "aim": aim,
                "landed": outcome["landed"],
                "killed at step": outcome["step"],
                "resumes from step": after,
                "redone steps": max(outcome["step"] - after, 0),
            }
        )
    final = subprocess.run(chaos, cwd=REPO, env=env, capture_output=True, text=True)
    if final.returncode != 0:
        failures.append(final.stderr[-2000:])

    finished = final.returncode == 0 and resume_step(run_dir) == total
    a, b = weights(root / "unbroken"), weights(run_dir)
    identical = finished and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids, parts, readable = wandb_runs(run_dir)
    leftovers = left_behind(run_dir, root / "unbroken")
    redone = [k["redone steps"] for k in kills]
    budget = args.every_n_steps or STEPS_PER_EPOCH
    rows = [
        *kills,
        {
            "aim": "summary",
            "kills survived": f"{len(kills) if finished else 0}/{args.kills}",
            "max redone steps": max(redone, default=0),
            "target": f"<= {budget} steps",
            "weights equal unbroken": identical,
            "files left behind": len(leftovers),
            "W&B runs": ids,
            "W&B parts readable": f"{readable}/{parts}",
        },
    ]
    columns = [
        "aim",
        "landed",
        "killed at step",
        "resumes from step",
        "redone steps",
        "kills survived",
        "max redone steps",
        "target",
        "weights equal unbroken",
        "files left behind",
        "W&B runs",
        "W&B parts readable",
    ]
    every = args.every_n_steps or "off"
    note = (
        f"{args.kills} kills, {args.epochs} epochs x {STEPS_PER_EPOCH} steps, every_n_train_steps {every}, "
        f"seed {args.seed}, {time.monotonic() - start:.0f} s" + (f"; runs in {root}" if args.root else "")
    )
    if leftovers:
        note += f"\nleft behind: {leftovers}"
    for failure in failures:
        note += f"\na run failed:\n{failure}"
    name = "chaos" if not args.every_n_steps else f"chaos_every_{args.every_n_steps}_steps"
    report(name, [dict.fromkeys(columns, "") | row for row in rows], columns, note=note)
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)
    return rows[-1]


if __name__ == "__main__":
    if any(arg.startswith("--every-n-steps") for arg in sys.argv[1:]):
        main()
    else:  # both checkpoint cadences: a kill redoes at most an epoch, or at most N steps
        main([*sys.argv[1:], "--every-n-steps", "0"])
        main([*sys.argv[1:], "--every-n-steps", "3"])
