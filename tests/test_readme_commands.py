"""The README's commands run here, so a documented command that stops working fails `make test`.

Every command of the README's shell blocks ("Make it yours" included) is either run, with the debug
presets and tiny limits, in a temporary working directory (so nothing lands in this checkout's runs/),
`python -m` commands in this process and `make` ones as subprocesses, or listed in NOT_RUN with the
reason it cannot run here. A command that is neither fails `test_every_readme_command_is_run_or_listed`,
so a new one cannot slip in untested. The README's Python blocks are executed too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from project.__main__ import dispatch
from project.cli import main
from tests.conftest import REPO, own_wandb_service

PACKAGE = main.__module__.split(".")[0]  # the package's name, after a rename too
README = REPO / "README.md"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\s*$")
SHELL = {"bash", "sh", "shell", "console"}

# Not run here, each with why (commands as the README spells them, comments and line breaks removed).
# A `make` target listed here is still checked to exist (`make -n`).
NOT_RUN = {
    "make init": "installs the pinned dependencies into venv/ (minutes, network); CI runs it first",
    f"python -m {PACKAGE}": "downloads CIFAR-10 (163 MB); tests/test_cifar10.py tests the download",
    "make rename NAME=mynet": "rewrites this checkout; tests/test_rename.py renames a copy and runs it",
    "make style": "rewrites this checkout's files; `make quality` (CI) runs the same checks",
    "git add -A": "commits to this checkout",
    "git commit -m 'Rename to mynet'": "commits to this checkout",
    f"python -m {PACKAGE} fit --config configs/cifar10.yaml --config configs/ddp.yaml --trainer.devices 4": (
        "4 GPUs and the CIFAR-10 download"
    ),
    f"python -m {PACKAGE} fit --config configs/digits.yaml --config configs/ddp.yaml "
    "--trainer.accelerator cpu --trainer.devices 2": "two DDP processes: tests/test_distributed.py runs this",
    f"torchrun --nnodes 2 --nproc_per_node 4 --node_rank 0 --master_addr node0.cluster --master_port 29500 "
    f"--rdzv_id my-experiment -m {PACKAGE} fit --config configs/cifar10.yaml --config configs/ddp.yaml "
    "--trainer.num_nodes 2 --trainer.devices 4": (
        "several machines with GPUs; tests/test_distributed.py runs two torchrun nodes on 127.0.0.1"
    ),
    "sbatch scripts/slurm.sbatch": "needs SLURM; tests/test_distributed.py checks the script",
    "make quality": "ruff and mypy over the whole tree: CI runs it, tests/test_quality_gate.py checks it",
    "make bench": "minutes of benchmarks; tests/test_benchmarks.py runs each one small",
    "make rename NAME=x": "rewrites this checkout (see make rename NAME=mynet)",
    "venv/bin/python -m pytest -k regress --regen-regress": "rewrites the committed golden files",
    "git diff --stat tests/regress/": "reads this checkout's git history",
    f"python -m {PACKAGE} tune --config configs/digits.yaml --search configs/search/digits.yaml "
    "--n_trials 20": ("20 trials of 30 epochs; tests/test_sweep.py runs 4-trial studies of the same config"),
    f"python -m {PACKAGE} tune --config configs/digits.yaml --search configs/search/digits.yaml "
    "--storage postgresql://user:password@db-host/optuna": (
        "a PostgreSQL server of yours; tests/test_sweep_workers.py joins two tune processes on one it starts"
    ),
    f"python -m {PACKAGE} cv --config configs/digits.yaml --folds 3 --trainer.max_epochs 5": (
        "3 fits of 5 epochs; tests/test_cv.py runs a 2-fold cv of the same config end to end"
    ),
    f"python -m {PACKAGE} tune --config configs/cifar10.yaml --search configs/search/cifar10.yaml "
    "--storage postgresql://user:password@db-host/optuna": "SLURM, GPUs, a PostgreSQL server and CIFAR-10",
}
# Not run here either, by shape: `make test`, `make test-fast`, `make test-cli`, `make test-pdb-cli`, ...
NOT_RUN_PATTERNS = {re.compile(r"make test(-[\w-]+)?( .*)?"): "runs (part of) this test suite"}
# The "Make it yours" steps name the user's future files; here they run as the worked example.
PLACEHOLDERS = {
    "python -m mynet": f"python -m {PACKAGE}",
    "configs/my_experiment.yaml": "examples/guide_example.yaml",
}
# Appended to every training command: the debug preset and tiny limits (a later flag wins).
SHRINK = [
    "--config", "configs/debug/limit.yaml", "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1",
]  # fmt: skip
MAKE_RUN = {
    "demo": [f"ARGS={shlex.join(SHRINK)}"],
    "clean": [],
}  # make targets run here, with their extra arguments


def blocks(lang: set[str]) -> list[str]:
    """The bodies of the README's fenced blocks in `lang`, indented ones (inside lists) included."""
    found: list[str] = []
    body: list[str] = []
    indent, inside, keep = 0, False, False
    for line in README.read_text().splitlines():
        match = FENCE.match(line)
        if match and not inside:
            inside, indent, body = True, len(match["indent"]), []
            keep = match["lang"] in lang
        elif match and inside:
            inside = False
            if keep:
                found.append("\n".join(body))
        elif inside:
            body.append(line[indent:])
    return found


def commands() -> list[str]:
    """Each shell command of the README, in order: continuation lines joined, comments dropped, `&&`
    chains split."""
    found: list[str] = []
    for block in blocks(SHELL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                found.append(shlex.join(words[:cut]))
                words = words[cut + 1 :]
    return [c for c in found if c]


def is_python_cli(command: str) -> bool:
    return command.startswith((f"python -m {PACKAGE} ", "python -m mynet ")) and command not in NOT_RUN


def runnable(command: str) -> bool:
    words = command.split()
    return (
        is_python_cli(command)
        or (words[0] == "make" and words[1] in MAKE_RUN)
        or command == "source venv/bin/activate"
    )


def listed(command: str) -> bool:
    return command in NOT_RUN or any(pattern.fullmatch(command) for pattern in NOT_RUN_PATTERNS)


def test_every_readme_command_is_run_or_listed() -> None:
    found = commands()
    assert len(found) >= 10  # the extraction works
    unknown = [c for c in found if not runnable(c) and not listed(c)]
    assert not unknown, (
        f"README commands that no test runs: {unknown}. Make them run in tests/test_readme_commands.py "
        "(python -m commands run by themselves), or add them to its NOT_RUN with the reason"
    )
    stale = [c for c in NOT_RUN if c not in found]
    assert not stale, f"NOT_RUN lists commands the README no longer has: {stale}"


def test_the_make_targets_not_run_exist() -> None:
    """`make -n`: the targets not run here are still in the Makefile (their commands printed, not run)."""
    for command in [c for c in commands() if c.startswith("make ") and not runnable(c)]:
        result = subprocess.run([*command.split(), "-n"], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def test_the_readme_python_blocks_run() -> None:
    for block in blocks({"python"}):
        exec(compile(block, "README.md", "exec"), {})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with what the commands read (configs/, examples/, the Makefile), so runs/
    lands here."""
    cwd = tmp_path_factory.mktemp("readme")
    for folder in ("configs", "examples"):
        shutil.copytree(REPO / folder, cwd / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Makefile", cwd)
    return cwd


def resolve(command: str, cwd: Path) -> list[str]:
    """The command as run here: placeholders filled, `runs/<run>` the newest run that trained so far
    (a test or predict run has no checkpoints of its own)."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    trained = (p.parent.parent for p in cwd.glob("runs/*/checkpoints/last.ckpt"))
    runs = sorted(trained, key=lambda p: p.stat().st_mtime)
    if "runs/<other-run>" in command:  # --diff: the run before it
        assert len(runs) >= 2, f"{command}: fewer than two runs made by earlier README commands"
        command = command.replace("runs/<other-run>", f"runs/{runs[-2].name}")
    if "runs/<run>" in command:
        assert runs, f"{command}: no run made by an earlier README command"
        run = runs[-1]
        command = command.replace("runs/<run>", f"runs/{run.name}")
        best = sorted((run / "checkpoints").glob("best-*.ckpt"))
        command = re.sub(r"best-epoch\d+\.ckpt", best[-1].name if best else "best", command)
    words = shlex.split(command)
    if words[:2] == ["python", "-m"]:
        words = [sys.executable, *words[1:]]
        lightning_cli = words[3] in ("fit", "validate", "test", "predict")  # not `runs`: it trains nothing
        if lightning_cli and not any("help" in w or w == "--print_config" for w in words):
            words += SHRINK
    elif words[0] == "make":
        words = ["make", f"PY={sys.executable}", *words[1:], *MAKE_RUN[words[1]]]
    return words


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", [pytest.param(c, id=re.sub(r"[^\w./= -]+", "_", c)) for c in commands() if runnable(c)]
)
def test_a_readme_command_runs(
    command: str, workspace: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    if command == "source venv/bin/activate":  # a shell builtin: the file it reads is there
        assert (Path(sys.executable).parent / "activate").is_file()
        return
    words = resolve(command, workspace)
    if words[0] == sys.executable:  # python -m project ...: in this process, as `python -m` would run it
        status = run_in_process(words[3:], workspace, monkeypatch)
        errors = capfd.readouterr().err
    else:
        env = own_wandb_service() | {
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        }
        result = subprocess.run(words, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
        status, errors = result.returncode, result.stderr
    assert status == 0, f"{shlex.join(words)} failed:\n{errors[-3000:]}"


def run_in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """`python -m <package> ARGS` in `cwd`, in this process: the CLI's seconds of imports are paid once
    for all the README's commands rather than once each. Returns the exit status."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [PACKAGE, *args])
    try:
        dispatch()
    except SystemExit as stop:  # --help, --print_config, an error: as the process would exit
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0
