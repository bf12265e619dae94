"""The quality gate: ruff and mypy check every source file git knows (and nothing else); mypy catches
wrong struct fields and model signatures; the pre-commit hooks run the same checks offline and refuse a
badly formatted file."""

from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mypy.main import process_options

from tests.conftest import REPO

# The package's name as setup.cfg declares it: `project`, or whatever `make rename` made it.
_SETUP = configparser.ConfigParser()
_SETUP.read(REPO / "setup.cfg")
PACKAGE = _SETUP["metadata"]["name"]

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


def source_files() -> set[Path]:
    """The Python files of this checkout as git sees them: tracked, plus new files it does not ignore
    (in a clean clone, exactly `git ls-files '*.py'`)."""
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"]
    out = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {REPO / rel for rel in out.split("\0") if rel and (REPO / rel).is_file()}


def ruff_files(root: Path) -> set[Path]:
    """The Python files `ruff check` (as `make quality` runs it, from root) would lint."""
    shown = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", "."],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return {Path(line) for line in shown.splitlines() if line.endswith(".py")}


def test_ruff_and_mypy_check_every_source_file_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = source_files()
    assert {REPO / PACKAGE / "data" / "__init__.py", REPO / "tests" / "conftest.py"} <= expected
    assert ruff_files(REPO) == expected
    # mypy's own reading of setup.cfg ([mypy] files = ...), as `make quality` runs it: from the root.
    monkeypatch.chdir(REPO)
    sources, options = process_options([], stdout=io.StringIO(), stderr=io.StringIO())
    assert options.config_file == "setup.cfg"
    assert {(REPO / source.path).resolve() for source in sources if source.path} == expected


def test_a_long_line_in_the_package_data_folder_fails_the_gate(tmp_path: Path) -> None:
    """<package>/data/ is source; data/, runs/, venv/ and wandb/ at the top are not (anchored excludes)."""
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    wide = 'FEATURES = "' + "alcohol," * 13 + 'ash"\n'  # 120 characters, over the 110 of pyproject.toml
    assert len(wide.rstrip()) == 120
    for folder in (f"{PACKAGE}/data", "data", "runs/old", "venv/lib", "wandb/latest"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "wine.py").write_text(wide)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    assert ruff_files(tmp_path) == {
        tmp_path / PACKAGE / "data" / "wine.py",
        tmp_path / PACKAGE / "__init__.py",
    }
    gate = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gate.returncode == 1
    flagged = re.findall(r"^(\S+?):\d+:\d+: (\w+)", gate.stdout, re.M)
    assert flagged == [(f"{PACKAGE}/data/wine.py", "E501")], gate.stdout


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
