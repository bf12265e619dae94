"""A checkpoint's remembered file paths are data from a file: the paths Lightning may delete when a
better checkpoint replaces a top-k one. A crafted checkpoint whose ModelCheckpoint state points out of
its folder (`checkpoints/../../victim.txt`) must not make a resumed run delete that file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from project.callbacks.moved_run import keep_inside
from project.cli import main
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, cli_args

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
LIMIT = str(CONFIGS / "debug" / "limit.yaml")


@pytest.mark.slow  # three epochs through the CLI
def test_a_crafted_checkpoint_cannot_make_a_resumed_run_delete_files_outside_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["--config", DIGITS, "--config", LIMIT, "--run_name", "victimised", "--resume", "auto",
            "--test_after_fit", "false", "--trainer.max_epochs", "3"]  # fmt: skip
    first = main(cli_args("fit", *args, "--trainer.callbacks+=tests.test_cli.StopAfterEpochs", runs_dir=runs))
    assert first is not None
    folder = first.run_dir / "checkpoints"
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    outside = str(folder / ".." / ".." / ".." / "victim.txt")  # lexically under checkpoints/, really not
    assert Path(outside).resolve() == victim.resolve()

    last = folder / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    crafted = 0
    for key, state in checkpoint["callbacks"].items():
        if key.startswith("ModelCheckpoint") and "'monitor': 'val/acc'" in key:
            state["best_k_models"] = {outside: torch.tensor(-1.0)}  # the worst score: replaced first
            state["best_model_path"] = state["kth_best_model_path"] = outside
            state["best_model_score"] = state["kth_value"] = torch.tensor(-1.0)
            crafted += 1
    assert crafted == 1
    torch.save(checkpoint, last)

    resumed = main(cli_args("fit", *args, runs_dir=runs))
    assert resumed is not None and resumed.trainer.current_epoch == 3
    assert victim.read_text() == "not yours"
    best = resumed.trainer.checkpoint_callback
    assert isinstance(best, ModelCheckpoint) and Path(best.best_model_path).parent == folder  # a real best


def test_keep_inside_keeps_only_files_of_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (folder / "link").symlink_to(tmp_path / "elsewhere")
    good = str(folder / "best-epoch001.ckpt")
    bad = [str(folder / ".." / "x.ckpt"), str(folder / "link" / "x.ckpt"), "/etc/passwd", str(folder), 3]
    state = {"best_model_path": good, "kth_best_model_path": bad[0], "last_model_path": bad[1],
             "best_k_models": {good: 0.9, **{b: 0.1 for b in bad if isinstance(b, str)}}}  # fmt: skip
    keep_inside(state, str(folder))
    assert state == {"best_model_path": good, "kth_best_model_path": "", "last_model_path": "",
                     "best_k_models": {good: 0.9}}  # fmt: skip
