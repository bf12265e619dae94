"""Scaling out on Lightning's own strategies: real DDP on 2 CPU processes (gloo), two torchrun
"nodes" on 127.0.0.1, and the run naming that keeps every process of a job in one run directory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

from project.cli import main
from project.data import DigitsDataModule
from project.errors import UserError
from project.run_dir import resolve_run_dir
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, REPO, cli_args, own_wandb_service, unused_port

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: looked at in one test only
VISUALS_DIGITS = str(CONFIGS / "digits.yaml")
LIMIT = str(CONFIGS / "debug" / "limit.yaml")
DDP = str(CONFIGS / "ddp.yaml")
TRAIN_ON = ["--config", DIGITS, "--config", LIMIT, "--config", DDP, "--trainer.accelerator", "cpu",
            "--trainer.callbacks+=tests.test_distributed.RecordRank"]  # fmt: skip


class RecordRank(pl.Callback):
    """Each rank writes what it trained on and a digest of its final weights to rank<N>.json."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        split = trainer.datamodule.split  # type: ignore[attr-defined]
        digest = hashlib.sha256()
        for tensor in pl_module.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        record = {"world_size": trainer.world_size, "train": split.train, "val": split.val,
                  "weights": digest.hexdigest()}  # fmt: skip
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


class CountingDigits(DigitsDataModule):
    """Digits that note every call of prepare_data, which must run once per node, not per process."""

    def prepare_data(self) -> None:
        assert self.trainer is not None
        with open(Path(self.trainer.default_root_dir) / "prepare_data.log", "a") as log:
            log.write(f"{os.getpid()}\n")


def records(run_dir: Path, world_size: int) -> list[dict[str, object]]:
    return [json.loads((run_dir / f"rank{rank}.json").read_text()) for rank in range(world_size)]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(runs_dir: Path) -> None:
    """One run directory, one W&B run, data prepared once, the same split and weights on both ranks;
    and the last validation epoch (101 samples: the 2 shards differ in size, 51 and 50) logs the loss,
    metrics, top-k/bottom-k dataset indices, confusion matrix and ECE that a 1-process validate of
    last.ckpt logs."""
    subset = ["--data.init_args.dev_subset", "101"]
    with_visuals = [VISUALS_DIGITS if arg == DIGITS else arg for arg in TRAIN_ON]
    result = subprocess.run(
        [sys.executable, "-m", "project", "fit", *with_visuals, *subset,
         "--trainer.devices", "2", "--run_name", "ddp", "--data", "tests.test_distributed.CountingDigits",
         "--trainer.default_root_dir", str(runs_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=own_wandb_service(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in runs_dir.iterdir()] == ["ddp"]
    run_dir = runs_dir / "ddp"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    # prepare_data runs once per stage (fit, then the test after it), always in the one process of rank 0.
    assert len(set((run_dir / "prepare_data.log").read_text().split())) == 1
    rank0, rank1 = records(run_dir, 2)
    assert rank0["world_size"] == 2 and rank0 == rank1  # same split, same weights
    assert json.loads((run_dir / "split.json").read_text())["val"] == rank0["val"]

    last = str(run_dir / "checkpoints" / "last.ckpt")  # the weights of the last validation epoch
    single = main(
        cli_args("validate", "--config", VISUALS_DIGITS, *subset, "--ckpt_path", last, runs_dir=runs_dir)
    )
    assert single is not None
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (run_dir, single.run_dir)]
    for key in ("val/acc", "val/f1", "val/loss"):  # torchmetrics states summed over ranks: exact
        assert metrics[0][key] == pytest.approx(metrics[1][key], abs=1e-6), key

    def visuals(folder: Path) -> tuple[dict[str, list[int]], list[list[int]], float]:
        table = json.loads((folder / "top_k_table.json").read_text())
        sets = {s: [row["index"] for row in table if row["set"] == s] for s in ("top_k", "bottom_k")}
        counts = json.loads((folder / "confusion_matrix.json").read_text())["counts"]
        return sets, counts, json.loads((folder / "uncertainty.json").read_text())["ece"]

    two = visuals(run_dir / "plots" / "val" / "epoch_1")  # LIMIT's 2 epochs: epoch_1 is the last
    one = visuals(single.run_dir / "plots" / "val" / "last")  # named after the checkpoint validated
    assert two[0] == one[0]
    assert two[1] == one[1] and sum(map(sum, two[1])) == 101  # every sample counted exactly once
    assert two[2] == pytest.approx(one[2], abs=1e-6)


@pytest.mark.slow
def test_two_torchrun_nodes_on_loopback_train_together(runs_dir: Path) -> None:
    """Two torchrun launches (--nnodes 2, one process each) meet at 127.0.0.1 and train one model.
    No --run_name: both name the run after the shared rendezvous id."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    port = str(unused_port())
    processes = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                "--rdzv_id",
                "job7",
                "-m",
                "project",
                "fit",
                *TRAIN_ON,
                "--trainer.devices",
                "1",
                "--trainer.num_nodes",
                "2",
                "--trainer.default_root_dir",
                str(runs_dir),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=own_wandb_service(),
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    assert [p.name for p in runs_dir.iterdir()] == ["digits-convnet-job7"]
    run_dir = runs_dir / "digits-convnet-job7"
    node0, node1 = records(run_dir, 2)
    assert node0["world_size"] == 2 and node0 == node1  # trained together: same split, same weights
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_launcher_processes_agree_on_one_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("RANK", "1")
    path, _ = resolve_run_dir(tmp_path, None, ["convnet"], "never")
    assert path == tmp_path / "convnet-abc" and not path.exists()  # rank 1 waits for rank 0 to create it
    monkeypatch.setenv("RANK", "0")
    assert resolve_run_dir(tmp_path, None, ["convnet"], "never")[0].is_dir()

    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert (
        resolve_run_dir(tmp_path, None, ["convnet", "test"], "never")[0] == tmp_path / "convnet-test-slurm77"
    )

    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(UserError, match="pass the same --run_name to every process"):
        resolve_run_dir(tmp_path, None, ["convnet"], "never")


@pytest.mark.slow
def test_slurm_script_is_valid_and_its_command_parses() -> None:
    script = REPO / "scripts" / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert re.search(r"^#SBATCH --ntasks-per-node=\d+", text, re.MULTILINE)  # one task per device
    command = text[text.index("srun ") + len("srun ") :].replace("\\\n", " ")
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_ID": "123"}
    words = [os.path.expandvars(w.strip('"')) if "$" in w else w for w in command.split()]
    for key, value in env.items():
        words = [w.replace("${" + key + "}", value) for w in words]
    assert words[:3] == ["venv/bin/python", "-m", "project"]
    result = subprocess.run(
        [sys.executable, "-m", "project", *words[3:], "--print_config"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    config = result.stdout
    for expected in ("strategy: ddp", "num_nodes: 2", "devices: '4'", "accelerator: gpu", "resume: auto",
                     "run_name: cifar10-123"):  # fmt: skip
        assert expected in config, expected
