"""Exact resume from a checkpoint saved in the middle of an epoch (`every_n_train_steps`): the train
loaders start at any batch of an epoch and read what an unbroken run reads there (augmentation
included, both loaders), the checkpoint records where, and a run SIGKILLed mid-epoch and resumed ends
with the unbroken run's weights bit for bit, having redone at most N steps."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from project.cli import main
from project.data import DigitsDataModule
from project.data.device_augment import Augmentation
from project.data.resumable import TrainPosition
from project.structs import Example
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, REPO, own_wandb_service

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
LIMIT = str(CONFIGS / "debug" / "limit.yaml")


class AugmentedDigits(DigitsDataModule):
    """Digits with a random crop and flip, so that the augmentation's seeding is under test too."""

    def augmentation(self) -> Augmentation | None:
        return Augmentation(crop_padding=1, flip=True)


def batches(loader: Iterable[Example]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(e.image.clone(), e.label.clone(), e.index.clone()) for e in loader]  # type: ignore[union-attr]


def epoch_read(device_loader: bool, epoch: int, resume: TrainPosition | None) -> list[Any]:
    data = AugmentedDigits(batch_size=50, device_loader=device_loader, shuffle_seed=3, dev_subset=400)
    data.setup("fit")
    if resume is not None:
        data.load_state_dict({"train_position": resume._asdict()})
        return batches(data.train_dataloader())
    loader = data.train_dataloader()
    if device_loader:  # without a trainer, the device loader numbers epochs by the iterations started
        for _ in range(epoch):
            batches(loader)
    else:
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]  # what Lightning does each epoch
    return batches(loader)


@pytest.mark.parametrize("device_loader", [False, True], ids=["dataloader", "device_loader"])
def test_a_train_loader_resumed_at_batch_k_reads_the_rest_of_that_epoch_exactly(device_loader: bool) -> None:
    """Read epoch 1 whole; then, as a resumed run would, from batch 4 of epoch 1 on: the same batches,
    the same augmented pixels. Then the loader goes on as usual (the resume position is used once)."""
    whole = epoch_read(device_loader, epoch=1, resume=None)
    assert len(whole) > 5
    other_epoch = epoch_read(device_loader, epoch=0, resume=None)
    assert not torch.equal(whole[0][2], other_epoch[0][2])  # epochs are shuffled differently
    resumed = epoch_read(device_loader, epoch=1, resume=TrainPosition(1, 4))
    assert len(resumed) == len(whole) - 4
    for (image, label, index), (image_r, label_r, index_r) in zip(whole[4:], resumed, strict=True):
        assert torch.equal(index, index_r) and torch.equal(label, label_r)
        assert torch.equal(image, image_r)  # the random crop and flip too
    # The augmentation did run (an epoch's images differ from the unaugmented ones somewhere).
    plain = DigitsDataModule(batch_size=50, device_loader=device_loader, shuffle_seed=3, dev_subset=400)
    plain.setup("fit")
    unaugmented = {
        int(i): img for b in batches(plain.train_dataloader()) for img, i in zip(b[0], b[2], strict=True)
    }
    assert any(
        not torch.equal(img, unaugmented[int(i)]) for img, i in zip(whole[0][0], whole[0][2], strict=True)
    )


@pytest.mark.parametrize("device_loader", [False, True], ids=["dataloader", "device_loader"])
def test_a_loop_without_set_epoch_still_reads_a_new_order_each_epoch(device_loader: bool) -> None:
    """A hand-written loop over train_dataloader() (no Lightning, no set_epoch): epoch after epoch,
    a fresh permutation, the same as the Trainer's epochs 0, 1, 2."""
    data = DigitsDataModule(batch_size=50, device_loader=device_loader, shuffle_seed=3, dev_subset=400)
    data.setup("fit")
    loader = data.train_dataloader()
    orders = [torch.cat([e.index for e in loader if e.index is not None]) for _ in range(3)]
    assert len({tuple(order.tolist()) for order in orders}) == 3
    if not device_loader:
        loader.sampler.set_epoch(1)  # type: ignore[union-attr]  # what Lightning does
        assert torch.equal(torch.cat([e.index for e in loader if e.index is not None]), orders[1])


def test_a_resume_position_from_a_file_is_used_only_when_well_formed() -> None:
    """A checkpoint's DataModule state is data from a file: anything but two non-negative ints is ignored."""
    assert TrainPosition.from_state({"epoch": 2, "batch": 5}) == TrainPosition(2, 5)
    for bad in (
        None,
        [2, 5],
        {"epoch": "2", "batch": 5},
        {"epoch": 2, "batch": -1},
        {"epoch": 2.0, "batch": 1},
    ):
        assert TrainPosition.from_state(bad) is None


def checkpoint_config(tmp_path: Path, every_n_steps: int) -> Path:
    """configs/defaults.yaml with last.ckpt refreshed every N steps (its third ModelCheckpoint)."""
    defaults = (CONFIGS / "defaults.yaml").read_text()
    assert defaults.count("every_n_train_steps: 0\n") == 1
    config = tmp_path / "every_n_steps.yaml"
    config.write_text(defaults.replace("every_n_train_steps: 0\n", f"every_n_train_steps: {every_n_steps}\n"))
    return config


def fit_command(run_dir: Path, defaults: Path, device_loader: bool) -> list[str]:
    return [sys.executable, "-m", "project", "fit", "--config", str(defaults), "--config", DIGITS,
            "--config", LIMIT, "--trainer.max_epochs", "3", "--trainer.deterministic", "true",
            "--trainer.default_root_dir", str(run_dir.parent), "--run_name", run_dir.name,
            "--resume", "auto", "--test_after_fit", "false",
            "--data.init_args.device_loader", str(device_loader).lower()]  # fmt: skip


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    return state


def global_step(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, weights_only=True)["global_step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def kill_at_a_mid_epoch_checkpoint(process: subprocess.Popen[bytes], last: Path, after_step: int) -> int:
    """SIGKILL `process` once its last.ckpt holds a step >= after_step that is not an epoch's end (10 steps
    an epoch); return that step. The run is frozen (SIGSTOP) while the file is read, so the step read is
    the one it dies with: a run that wrote its epoch-end checkpoint meanwhile goes on to the next one."""
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if last.is_file() and global_step(last) >= after_step:
                process.send_signal(signal.SIGSTOP)
                step = global_step(last)
                if step % 10 != 0:
                    process.send_signal(signal.SIGKILL)
                    return step
                process.send_signal(signal.SIGCONT)
            time.sleep(0.05)
    finally:
        process.wait(timeout=60)
    raise AssertionError("the run ended before a mid-epoch checkpoint could be killed")


@pytest.mark.slow
@pytest.mark.parametrize("device_loader", [False, True], ids=["dataloader", "device_loader"])
def test_a_run_killed_in_the_middle_of_an_epoch_resumes_there_and_ends_bit_equal(
    tmp_path: Path, device_loader: bool
) -> None:
    """every_n_train_steps 3, 10 steps an epoch: SIGKILL once last.ckpt holds step 13 or later that is
    not an epoch's end (so mid-epoch 1), resume with the same command: the run goes on from that step,
    ends at step 30 like the unbroken run (a restarted epoch would overrun OneCycleLR's 30 steps and
    fail), and its final weights equal the unbroken run's bit for bit."""
    defaults = checkpoint_config(tmp_path, every_n_steps=3)
    env = own_wandb_service() | {"WANDB_MODE": "offline", "PYTHONHASHSEED": "0"}
    run = lambda run_dir: subprocess.run(  # noqa: E731
        fit_command(run_dir, defaults, device_loader),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    unbroken = tmp_path / "runs" / "unbroken"
    # In this process: the reference needs no kill, and a subprocess would add seconds of imports.
    assert main(fit_command(unbroken, defaults, device_loader)[3:]) is not None

    chaos = tmp_path / "runs" / "chaos"
    last = chaos / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(fit_command(chaos, defaults, device_loader), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    killed_at = kill_at_a_mid_epoch_checkpoint(process, last, after_step=13)
    assert killed_at % 10 != 0 and killed_at == global_step(last)  # a mid-epoch checkpoint
    resumed = run(chaos)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning for a loader that restarts its epoch

    expected, got = final_weights(unbroken), final_weights(chaos)
    assert global_step(last) == 30 == global_step(unbroken / "checkpoints" / "last.ckpt")
    assert expected.keys() == got.keys()
    moved = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not moved, f"weights differ from the unbroken run's: {moved}"
