"""The quality gate: mypy catches wrong struct fields and model signatures; the pre-commit hooks run
the same checks offline and refuse a badly formatted file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

GOOD = """
from project.model import BaseModel
from project.structs import Example, Loss, Prediction
from torch.nn import functional as F


class Net(BaseModel[Example, Prediction]):
    def forward(self, example: Example) -> Prediction:
        return Prediction(logits=example.image.flatten(1))

    def compute_loss(self, example: Example, prediction: Prediction) -> Loss:
        return Loss({"ce": F.cross_entropy(prediction.logits, example.require_label())})
"""

BAD = GOOD.replace("example.image.flatten(1)", "example.imgae.flatten(1)").replace(
    "return Loss({", "return prediction.logits.sum() or Loss({"
)


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    # cwd=REPO: the project's own mypy settings (setup.cfg) and cache, as `make quality` uses them.
    return subprocess.run(
        [sys.executable, "-m", "mypy", str(path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_mypy_passes_a_correct_variant(tmp_path: Path) -> None:
    result = mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout


def test_mypy_catches_a_misspelled_field_and_a_wrong_loss_type(tmp_path: Path) -> None:
    result = mypy(tmp_path, BAD)
    assert result.returncode == 1
    assert '"Example" has no attribute "imgae"; maybe "image"?' in result.stdout
    assert "Incompatible return value type" in result.stdout and 'expected "Loss"' in result.stdout


def test_pre_commit_hooks_run_offline_and_refuse_unformatted_code(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    (copy / "venv").symlink_to(REPO / "venv")  # the hooks call venv/bin/..., as in a real checkout
    env = os.environ | {"PRE_COMMIT_HOME": str(tmp_path / "cache"), "SKIP": "mypy"}  # mypy: tested above

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=copy, check=True, capture_output=True, env=env)

    def pre_commit() -> subprocess.CompletedProcess[str]:
        pre_commit_bin = Path(sys.executable).with_name("pre-commit")
        return subprocess.run(
            [str(pre_commit_bin), "run", "--all-files"],
            cwd=copy,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    git("init", "-q")
    git("add", "-A")
    clean = pre_commit()
    assert clean.returncode == 0, clean.stdout
    assert "ruff check" in clean.stdout and "Passed" in clean.stdout

    (copy / "project" / "badly_formatted.py").write_text("x = {  'a':1 }\n")
    git("add", "-A")
    dirty = pre_commit()
    assert dirty.returncode == 1
    assert "ruff format" in dirty.stdout and "Failed" in dirty.stdout
