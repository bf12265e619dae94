"""scripts/rename.py: the one-command rename of the package `project/`.

The fast tests run the script on a small git repository written here, which holds real lines of this
template (code references and prose). The slow test renames a copy of this repository and runs the
renamed package, its configs and its tests.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "rename.py"
HAS_GIT = shutil.which("git") is not None
needs_git = pytest.mark.skipif(not HAS_GIT, reason="needs the git command")


def free_name(*candidates: str) -> str:
    """The first candidate no module answers to in this interpreter, so that the script does not refuse
    it as "already importable": `mynet` unless this template was itself renamed to mynet (the README's
    example) or to the other candidates."""
    for name in candidates:
        if importlib.util.find_spec(name) is None:
            return name
    raise AssertionError(f"every one of {candidates} is importable here: add a candidate")


# The names the tests rename to. Each candidate has the length of the first, so the expected texts
# below (written for `mynet` and `my_research_net`) keep their column alignment with any of them.
NEW = free_name("mynet", "yrnet", "qznet", "zxnet")
LONG = free_name("my_research_net", "yr_research_net", "qz_research_net")


def as_new(text: str) -> str:
    """An expected text written for `mynet`, for the name the tests actually use."""
    return text.replace("mynet", NEW).replace("MYNET", NEW.upper())


# A small template: each file as (path, before, after). `after` None: the file must not change.
README = """\
# project: a typed, tested PyTorch Lightning template

A starting point for deep-learning research code: clone it, rename `project/`, replace the demo
model and dataset with yours.
A PyTorch Lightning project for your project's experiments: this
project's tests prove that it works, so every project can start from it.

```bash
make init                                 # venv/ with the pinned dependencies
venv/bin/python -m project                # default demo
make demo                                 # no network needed
python -m project test    --config configs/digits.yaml
python -m project predict --config configs/digits.yaml
```

```
project/
  cli.py        `python -m project` (LightningCLI + run directories)
```

- **Add a model**: subclass `BaseModel` in `project/model/my_net.py`, then set
  `model.class_path: project.model.MyNet` in a config. A run's ranks share `PROJECT_RUN_DIR`.
"""
README_AFTER = """\
# mynet: a typed, tested PyTorch Lightning template

A starting point for deep-learning research code: clone it, rename `mynet/`, replace the demo
model and dataset with yours.
A PyTorch Lightning project for your project's experiments: this
project's tests prove that it works, so every project can start from it.

```bash
make init                                 # venv/ with the pinned dependencies
venv/bin/python -m mynet                  # default demo
make demo                                 # no network needed
python -m mynet test    --config configs/digits.yaml
python -m mynet predict --config configs/digits.yaml
```

```
mynet/
  cli.py        `python -m mynet` (LightningCLI + run directories)
```

- **Add a model**: subclass `BaseModel` in `mynet/model/my_net.py`, then set
  `model.class_path: mynet.model.MyNet` in a config. A run's ranks share `MYNET_RUN_DIR`.
"""
# The real setup.cfg description line (prose: "project template").
DESCRIPTION = (
    "description = A typed, tested PyTorch Lightning project template: structs, BaseModel, DataModules, "
    "W&B callbacks."
)
SETUP_CFG = f"""\
[metadata]
name = project
{DESCRIPTION}

[options.packages.find]
include = project, project.*

[tool:pytest]
markers =
    slow: end-to-end runs of the project's CLI
filterwarnings =
    ignore::DeprecationWarning:project.*
    ignore::DeprecationWarning:wandb.*

[mypy]
packages = project

[mypy-project.structs.*]
disallow_any_generics = True
"""
SETUP_CFG_AFTER = f"""\
[metadata]
name = mynet
{DESCRIPTION}

[options.packages.find]
include = mynet, mynet.*

[tool:pytest]
markers =
    slow: end-to-end runs of the project's CLI
filterwarnings =
    ignore::DeprecationWarning:mynet.*
    ignore::DeprecationWarning:wandb.*

[mypy]
packages = mynet

[mypy-mynet.structs.*]
disallow_any_generics = True
"""
PYPROJECT = """\
# setup.cfg cannot hold the build backend or ruff's settings (ruff reads only pyproject.toml).
[project]
name = "project"

[tool.ruff.lint.isort]
known-first-party = ["project", "tests"]

[tool.coverage.run]
omit = ["project/_version.py"]
"""
PYPROJECT_AFTER = PYPROJECT.replace('"project"', '"mynet"').replace('"project/', '"mynet/')
DEFAULTS_YAML = """\
# Read first by every subcommand of `python -m project`; this project's configs override it.
trainer:
  logger:
    - class_path: pytorch_lightning.loggers.WandbLogger
      init_args:
        project: project
        save_dir: .
  callbacks:
    - class_path: project.callbacks.PredictionWriter
"""
DEFAULTS_YAML_AFTER = """\
# Read first by every subcommand of `python -m mynet`; this project's configs override it.
trainer:
  logger:
    - class_path: pytorch_lightning.loggers.WandbLogger
      init_args:
        project: mynet
        save_dir: .
  callbacks:
    - class_path: mynet.callbacks.PredictionWriter
"""
MAKEFILE = """\
PY = venv/bin/python

run:  ## train this project's default demo
\t$(PY) -m project $(ARGS)

quality:  ## lint and type-check the project
\t$(PY) -m mypy project tests
\t@echo "checked the project"
"""
MAKEFILE_AFTER = MAKEFILE.replace("-m project", "-m mynet").replace("mypy project", "mypy mynet")
CI_RUN = """\
#!/usr/bin/env bash
# CI for this project: lint the package
ruff check project tests
"""
INIT = '''\
"""A PyTorch Lightning project: typed structs, a BaseModel with variants, DataModules, callbacks.

Where things go:
    cli.py      `python -m project`
"""
'''
CLI = '''\
"""The command line.

    python -m project                                   # = fit --config configs/cifar10.yaml
    python -m project fit --config configs/digits.yaml  # offline demo
"""

import project
import project.errors
from project import errors
from project.run_dir import RUN_DIR_ENV

PACKAGE = "project"
PATTERNS = ["project", 'project.*', "project*"]
WANDB = {"project": "project"}
MODULE = ["-m", "project"]


def same_wandb_project(summary: dict[str, str]) -> bool:
    return summary["project"] == "project" and project.__name__ == PACKAGE
'''
CLI_AFTER = '''\
"""The command line.

    python -m mynet                                     # = fit --config configs/cifar10.yaml
    python -m mynet fit --config configs/digits.yaml  # offline demo
"""

import mynet
import mynet.errors
from mynet import errors
from mynet.run_dir import RUN_DIR_ENV

PACKAGE = "mynet"
PATTERNS = ["mynet", 'mynet.*', "mynet*"]
WANDB = {"project": "mynet"}
MODULE = ["-m", "mynet"]


def same_wandb_project(summary: dict[str, str]) -> bool:
    return summary["project"] == "mynet" and mynet.__name__ == PACKAGE
'''
RUN_DIR = """\
from project.errors import UserError

# rank 0 publishes its run directory to this project's other ranks
RUN_DIR_ENV = "PROJECT_RUN_DIR"
MY_PROJECT_SETTING = 1
"""
RUN_DIR_AFTER = RUN_DIR.replace("from project.", "from mynet.").replace('"PROJECT_', '"MYNET_')
SPLIT = """\
from project.errors import UserError


def not_a_split(path: str, e: Exception) -> UserError:
    return UserError(f"split_file {path} is not a split written by this project ({e!r})")
"""
TEST_CLI = '''\
"""`python -m project` end to end."""

import subprocess
import sys

from project.cli import PACKAGE


def run_module(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "project", *args], check=True)
'''
TEST_SPLIT = """\
CASES = [("not json", "not a split written by this project")]
"""
DATA_INIT = "from project.data.split import not_a_split\n"
FILES: list[tuple[str, str, str | None]] = [
    ("README.md", README, README_AFTER),
    ("setup.cfg", SETUP_CFG, SETUP_CFG_AFTER),
    ("pyproject.toml", PYPROJECT, PYPROJECT_AFTER),
    ("Makefile", MAKEFILE, MAKEFILE_AFTER),
    (".ci/run", CI_RUN, CI_RUN.replace("check project", "check mynet")),
    (".gitignore", "/venv/\n/data/\n/runs/\n/dist/\n__pycache__/\n", None),
    ("configs/defaults.yaml", DEFAULTS_YAML, DEFAULTS_YAML_AFTER),
    (
        "configs/digits.yaml",
        "model:\n  class_path: project.model.ConvNet\n",
        "model:\n  class_path: mynet.model.ConvNet\n",
    ),
    ("project/__init__.py", INIT, INIT.replace("-m project", "-m mynet")),
    ("project/__main__.py", "from project.cli import main\n", "from mynet.cli import main\n"),
    ("project/cli.py", CLI, CLI_AFTER),
    ("project/run_dir.py", RUN_DIR, RUN_DIR_AFTER),
    ("project/data/__init__.py", DATA_INIT, DATA_INIT.replace("project", "mynet")),
    ("project/data/split.py", SPLIT, SPLIT.replace("from project.", "from mynet.")),
    ("tests/test_cli.py", TEST_CLI, TEST_CLI.replace("project", "mynet")),
    ("tests/test_split.py", TEST_SPLIT, None),
    ("tests/test_rename.py", 'OLD = "project"\nimport project\n', None),  # never rewritten
]
BINARY = b"\x89PNG\r\n\x1a\n\x00project.model.ConvNet\x00"  # untouched, moved with the package
LATIN1 = "caf\xe9 and project.model.ConvNet\n".encode("latin-1")  # not UTF-8: untouched
# Real prose lines of this template that must survive a rename word for word.
PROSE_LINES = [
    "A PyTorch Lightning project for your project's experiments: this",
    "project's tests prove that it works, so every project can start from it.",
    DESCRIPTION,
    "    slow: end-to-end runs of the project's CLI",
    "# CI for this project: lint the package",
    '"""A PyTorch Lightning project: typed structs, a BaseModel with variants, DataModules, callbacks.',
    "# rank 0 publishes its run directory to this project's other ranks",
    '    return UserError(f"split_file {path} is not a split written by this project ({e!r})")',
    'CASES = [("not json", "not a split written by this project")]',
    "run:  ## train this project's default demo",
    '\t@echo "checked the project"',
]

# What must not remain anywhere in code after a rename, and the shapes of prose "project" in a README.
CODE_REFERENCE = re.compile(
    r"""\bimport\s+project\b|\bfrom\s+project\b|-m\s+project\b|(?<![\w.-])project\.[a-z_]"""
    r"""|(?<![\w-])project/|\bPROJECT_|(?<![\w\])}]\[)["']project["'](?!\s*:)"""
)
WORD = re.compile(r"(?<![\w-])project(?![\w-])")
PROSE_WORD = re.compile(r"(?<=[A-Za-z,] )project(?=['\s,;:!?)]|\.(?:\s|$)|$)|^[Pp]roject(?=[\s'])")


def git(root: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def rename(root: Path | None, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = SCRIPT if root is not None else (cwd or REPO) / "scripts" / "rename.py"
    root_args = ["--root", str(root)] if root is not None else []
    return subprocess.run(
        [sys.executable, str(script), *args, *root_args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under root (.git included): content hash and mode."""
    state: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or path.is_dir():
            state[rel] = ("dir" if path.is_dir() else os.readlink(path), path.lstat().st_mode)
        else:
            state[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return state


def write_template(root: Path) -> None:
    for rel, text, _ in FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / ".ci" / "run").chmod(0o755)
    (root / "project" / "assets").mkdir()
    (root / "project" / "assets" / "logo.png").write_bytes(BINARY)
    (root / "notes").mkdir()
    (root / "notes" / "latin1.txt").write_bytes(LATIN1)
    # Ignored (git) or skipped (no git): environments and outputs are never rewritten.
    for rel in ("venv/lib/site.py", "runs/old/config.yaml", "data/cache.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("from project.model import ConvNet  # class_path: project.model.ConvNet\n")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    """The small template, committed to a fresh git repository."""
    if not HAS_GIT:
        pytest.skip("needs the git command")
    root = tmp_path / "template"
    root.mkdir()
    write_template(root)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "--no-verify", "-m", "template")
    return root


def expected_after() -> dict[str, str]:
    """Each file's expected text after renaming to NEW, by its new path."""
    return {
        re.sub(r"^project/", f"{NEW}/", rel): text if after is None else as_new(after)
        for rel, text, after in FILES
    }


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rename_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# -- fast: the rewrite itself --------------------------------------------------------------------------


def test_renames_the_package_and_every_code_reference(template: Path) -> None:
    (template / "notes" / "todo.md").write_text("Try `python -m project fit` on `project/model/`.\n")
    before = snapshot(template)
    out = rename(template, NEW)
    assert out.returncode == 0, out.stderr
    assert not (template / "project").exists() and (template / NEW).is_dir()
    for rel, text in expected_after().items():
        assert (template / rel).read_text() == text, rel
    # Binary and non-UTF-8 files, ignored folders: byte for byte as they were, the binary moved along.
    assert (template / NEW / "assets" / "logo.png").read_bytes() == BINARY
    assert (template / "notes" / "latin1.txt").read_bytes() == LATIN1
    after = snapshot(template)
    for rel in ("venv/lib/site.py", "runs/old/config.yaml", "data/cache.py"):
        assert after[rel] == before[rel]
    # Untracked files that git does not ignore are rewritten too; the executable bit survives.
    assert (template / "notes" / "todo.md").read_text() == f"Try `python -m {NEW} fit` on `{NEW}/model/`.\n"
    assert after[".ci/run"][1] == before[".ci/run"][1]
    # It says what it did: the move, then each file it changed (and only those).
    assert f"move    project/ -> {NEW}/" in out.stdout
    changed = set(re.findall(r"^change  (\S+)", out.stdout, re.M))
    assert "README.md" in changed and "project/cli.py" in changed and "notes/todo.md" in changed
    assert not changed & {"tests/test_rename.py", "tests/test_split.py", ".gitignore", "notes/latin1.txt"}


def test_the_review_lists_name_files_where_they_are_after_the_move(template: Path) -> None:
    """The lines left as prose, and those now too long, are listed under the paths they have after the
    move (LONG/__init__.py, not project/__init__.py), so each can be opened as printed."""
    with (template / "pyproject.toml").open("a") as f:
        f.write("\n[tool.ruff]\nline-length = 60\n")
    long_line = "import project.errors  # " + "x" * 35  # 60 characters: too long once renamed
    (template / "project" / "long.py").write_text(long_line + "\n")
    git(template, "add", "-A")
    git(template, "commit", "-q", "--no-verify", "-m", "a line at the limit")
    out = rename(template, LONG)
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("\nLeft as prose", 1)[1]
    listed = re.findall(r"^  (\S+):(\d+): ", notes, re.M)
    assert (f"{LONG}/__init__.py", "1") in listed and (f"{LONG}/data/split.py", "5") in listed
    for rel, n in listed:
        assert "project" in (template / rel).read_text().split("\n")[int(n) - 1], (rel, n)
    too_long = re.search(r"^Now longer than the configured line length: (.*)\. Shorten", notes, re.M)
    assert too_long is not None and f"{LONG}/long.py:1" in too_long.group(1).split(", ")
    assert "project/" not in notes.split("\nRenamed ", 1)[0]


def test_prose_lines_survive_word_for_word(template: Path) -> None:
    assert rename(template, NEW).returncode == 0
    lines = {line for rel, _, _ in FILES for line in (template / re.sub(r"^project/", f"{NEW}/", rel)).open()}
    for prose in PROSE_LINES:
        assert prose + "\n" in lines, prose


@pytest.mark.skipif(not (REPO / "project").is_dir(), reason="the package has been renamed already")
def test_prose_of_the_real_readme_and_package_survives() -> None:
    """Every line of this repository's README (and a few prose-heavy files) that says "project" only
    as an English word comes out unchanged; every line with a code reference loses it."""
    script = load_script()
    checked = 0
    for rel in ["README.md", "setup.cfg", "project/__init__.py", "project/data/split.py"]:
        path = REPO / rel
        if not path.is_file():
            continue
        text = path.read_text()
        old_lines = text.split("\n")
        new_lines = script.rewrite_text(text, script.kind_of(rel, text), NEW).split("\n")
        for old, new in zip(old_lines, new_lines, strict=True):
            assert not CODE_REFERENCE.search(new), (rel, new)
            prose_only = not CODE_REFERENCE.search(old) and not WORD.search(PROSE_WORD.sub("", old))
            if PROSE_WORD.search(old) and prose_only:
                assert new == old, (rel, old)
                checked += 1
    assert checked >= 2  # the setup.cfg description and the package docstring at least


def test_a_longer_name_keeps_comment_columns_aligned(template: Path) -> None:
    assert rename(template, LONG).returncode == 0
    block = (template / "README.md").read_text().split("```bash\n")[1].split("```")[0].splitlines()
    assert block[1] == f"venv/bin/python -m {LONG}        # default demo"
    assert {line.index("#") for line in block[:3]} == {42}
    assert block[3].index("--config") == block[4].index("--config")  # alignment that is not a comment
    assert (template / LONG / "run_dir.py").read_text().count(f'"{LONG.upper()}_RUN_DIR"') == 1


def test_dry_run_prints_the_changes_and_writes_nothing(template: Path) -> None:
    before = snapshot(template)
    out = rename(template, NEW, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert snapshot(template) == before
    assert f"would move    project/ -> {NEW}/" in out.stdout
    assert "would change  setup.cfg" in out.stdout
    assert f"+ include = {NEW}, {NEW}.*" in out.stdout
    assert "nothing was written" in out.stdout
    assert "\n  project/__init__.py:1: " in out.stdout  # nothing moved: the paths as they are now


def test_dry_run_on_a_dirty_tree_previews_and_warns(template: Path) -> None:
    with (template / "README.md").open("a") as f:
        f.write("work in progress\n")
    before = snapshot(template)
    out = rename(template, NEW, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "would change  README.md" in out.stdout and "uncommitted changes" in out.stdout
    assert snapshot(template) == before


def test_a_second_run_has_nothing_to_do(template: Path) -> None:
    assert rename(template, NEW).returncode == 0
    before = snapshot(template)  # the rename is not committed: the tree is dirty, and that is fine
    out = rename(template, NEW)
    assert out.returncode == 0, out.stderr
    assert "Nothing to do" in out.stdout
    assert snapshot(template) == before


def test_without_git_it_walks_the_tree_and_skips_environments_and_outputs(tmp_path: Path) -> None:
    write_template(tmp_path)
    before = snapshot(tmp_path)
    out = rename(tmp_path, NEW)
    assert out.returncode == 0, out.stderr
    for rel, text in expected_after().items():
        assert (tmp_path / rel).read_text() == text, rel
    after = snapshot(tmp_path)
    for rel in ("venv/lib/site.py", "runs/old/config.yaml", "data/cache.py"):
        assert after[rel] == before[rel]


# -- fast: refusals, each leaving the tree byte-identical ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("my-net", "not a valid Python package name"),
        ("1net", "not a valid Python package name"),
        ("class", "is a Python keyword"),
        ("json", "is a standard-library module"),
        ("torch", "is already importable"),
        ("wandb", "is already importable"),
    ],
)
def test_refuses_a_name_that_cannot_be_a_package(template: Path, name: str, message: str) -> None:
    before = snapshot(template)
    out = rename(template, name)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {name!r}") and message in out.stderr
    assert "name" in out.stderr.split(":", 2)[-1]  # says how to fix it: another name
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""
    assert snapshot(template) == before


def test_refuses_a_dirty_tree(template: Path) -> None:
    with (template / "setup.cfg").open("a") as f:
        f.write("# edited\n")
    (template / "scratch.py").write_text("import project\n")  # untracked files alone would be fine
    before = snapshot(template)
    out = rename(template, NEW)
    assert out.returncode == 2
    assert "uncommitted changes (setup.cfg)" in out.stderr and "commit or stash" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""
    assert snapshot(template) == before


def test_untracked_files_alone_do_not_block(template: Path) -> None:
    (template / "scratch.py").write_text("import project\n")
    assert rename(template, NEW).returncode == 0
    assert (template / "scratch.py").read_text() == f"import {NEW}\n"


@pytest.mark.parametrize(("make", "name"), [(f"{NEW}/", NEW), (f"{NEW}.py", NEW), (None, "dist")])
def test_refuses_a_target_that_exists_or_is_ignored(template: Path, make: str | None, name: str) -> None:
    if make == f"{NEW}/":
        (template / NEW).mkdir()
        (template / NEW / "keep.txt").write_text("mine\n")
    elif make is not None:
        (template / make).write_text("x = 1\n")
    before = snapshot(template)
    out = rename(template, name)
    assert out.returncode == 2
    expected = (
        "git ignores dist/" if make is None else f"{template.resolve() / make.rstrip('/')} already exists"
    )
    assert expected in out.stderr and "choose another name" in out.stderr
    assert snapshot(template) == before


def test_refuses_a_root_without_the_package(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# something else\n")
    before = snapshot(tmp_path)
    out = rename(tmp_path, NEW)
    assert out.returncode == 2 and "there is no project/ package" in out.stderr and "--root" in out.stderr
    assert snapshot(tmp_path) == before


# -- slow: rename a copy of this repository, then run it ------------------------------------------------


def repo_files() -> list[str]:
    """This repository's files as git sees them: tracked, plus untracked files it does not ignore."""
    out = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted({rel for rel in out.split("\0") if rel and (REPO / rel).is_file()})


@pytest.mark.slow
@needs_git
@pytest.mark.skipif(not (REPO / "project").is_dir(), reason="the package has been renamed already")
def test_renamed_copy_of_this_repository_runs(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    files = repo_files()
    for rel in files:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, copy / rel)
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-q", "--no-verify", "-m", "copy")
    ruff = Path(sys.executable).with_name("ruff")
    lint = [str(ruff), "check", "-q", "--no-cache", "."]
    lint_before = subprocess.run(lint, cwd=copy, capture_output=True).returncode if ruff.exists() else None

    out = rename(None, NEW, cwd=copy)  # as `make rename NAME=...` runs it: the default root
    assert out.returncode == 0, out.stderr
    assert f"move    project/ -> {NEW}/" in out.stdout
    assert not (copy / "project").exists()
    package = sorted(rel.removeprefix("project/") for rel in files if rel.startswith("project/"))
    assert sorted(p.relative_to(copy / NEW).as_posix() for p in (copy / NEW).rglob("*.py")) == [
        rel for rel in package if rel.endswith(".py")
    ]

    env = {k: v for k, v in os.environ.items() if not k.endswith("_RUN_DIR")}
    env |= {"PYTHONPATH": str(copy), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env |= {f"WANDB_{d}_DIR": str(tmp_path / "wandb" / d.lower()) for d in ("CONFIG", "CACHE", "DATA")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600
        )

    where = run("-c", f"import {NEW}; print({NEW}.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(copy / NEW), where
    # `project` may still resolve to the editable install of the original, never to the copy.
    old = run("-c", "import importlib.util as u; s = u.find_spec('project'); print(s and s.origin)")
    assert str(copy) not in old.stdout
    runs = tmp_path / "runs"
    # A short real run (fast_dev_run keeps no run directory): one epoch of two batches, then its test.
    fast = ["--config", "configs/digits.yaml", "--config", "configs/debug/limit.yaml",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]  # fmt: skip
    fit = run("-m", NEW, "fit", *fast, "--trainer.default_root_dir", str(runs))
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert f"Run directory: {runs}" in fit.stdout
    # The config the renamed CLI resolved and saved names the new package only.
    (saved,) = runs.glob("*/config.yaml")
    config = saved.read_text()
    assert f"class_path: {NEW}.model.ConvNet" in config and f"project: {NEW}" in config
    assert f"{NEW}.callbacks.PredictionWriter" in config and "project." not in config
    tests = ["tests/test_structs.py", "tests/test_models.py", "tests/test_split.py"]
    pytest_run = run("-m", "pytest", "-q", "-x", *tests, "-p", "no:cacheprovider")
    assert pytest_run.returncode == 0, pytest_run.stdout[-3000:]

    # No code reference to the old package remains; README lines that still say "project" are prose.
    setup = configparser.ConfigParser()
    setup.read(copy / "setup.cfg")
    assert setup["metadata"]["name"] == NEW and setup["mypy"]["files"].split(", ")[0] == NEW
    assert setup["options.packages.find"]["include"] == f"{NEW}, {NEW}.*"
    leftovers = []
    for rel in files:
        path = copy / re.sub(r"^project/", f"{NEW}/", rel)
        if rel in ("scripts/rename.py", "tests/test_rename.py") or not path.is_file():
            continue
        if path.suffix in (".py", ".yaml", ".yml", ".cfg", ".toml") or path.name == "Makefile":
            leftovers += [
                f"{rel}: {line}" for line in path.read_text().splitlines() if CODE_REFERENCE.search(line)
            ]
        elif path.suffix == ".md":
            for line in path.read_text().splitlines():
                prose = PROSE_WORD.sub("", line)
                if CODE_REFERENCE.search(line) or WORD.search(prose):
                    leftovers.append(f"{rel}: {line}")
    assert leftovers == []
    if lint_before == 0:  # the rename itself keeps ruff clean (import order included)
        assert subprocess.run(lint, cwd=copy, capture_output=True).returncode == 0
