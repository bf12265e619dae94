#!/usr/bin/env python3
"""Rename the package `project/` to NAME and rewrite every code reference to it, in one command.

    python scripts/rename.py NAME [--root DIR] [--dry-run]        # make rename NAME=mynet

What is rewritten, in every text file git tracks (plus untracked files git does not ignore; outside a
git repository, every file except venv/, runs/, data/, wandb/, build outputs and caches):

- code references anywhere: `import project`, `from project import`, `python -m project`,
  dotted paths (`project.model.ConvNet`, `class_path: project.data.DigitsDataModule`), paths
  (`project/model/`), and the environment-variable prefix `PROJECT_` (`PROJECT_RUN_DIR`);
- by file type: the string literal "project" in Python, TOML, JSON, YAML and shell (`"-m", "project"`,
  `summary["project"] == "project"` keeps the subscripted key), YAML values (`project: project` under
  WandbLogger becomes `project: NAME`), setup.cfg name lists (`name = project`,
  `include = project, project.*`, `files = project`, `[mypy-project.*]`), command words in Makefile
  and shell recipes (`mypy project tests`), and a Markdown title `# project: ...`.

Prose is recognised by context, not by an allow-list: a word "project" that is not in one of the
code shapes above ("A PyTorch Lightning project", "written by this project") is left as it is, and
the lines kept that way are listed at the end for review. Nothing is written when any check fails;
problems the user can fix exit with status 2 and one message.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

OLD = "project"
ROOT = Path(__file__).resolve().parent.parent
# This script and its tests name the old package on purpose: they are never rewritten.
SELF = frozenset({"scripts/rename.py", "tests/test_rename.py"})
# Outside git: folders skipped at the top level only (project/data/ is code) and at any depth.
SKIP_TOP = frozenset({"venv", ".venv", "env", "runs", "data", "wandb", "lightning_logs", "build", "dist"})
SKIP_ANY = frozenset(
    {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints", ".tox"}
)
ALIGNED_COMMENT = re.compile(r" {3,}(?=#|<-)")  # a padded column of comments, kept aligned
PROSE = re.compile(r"(?<![\w-])project(?![\w-])")


class Refusal(Exception):
    """A problem the user can fix: printed as one line, exit status 2, nothing modified."""


# -- rewrite rules: each regex marks the token to replace as the group `p` --------------------------

COMMON = (
    re.compile(r"-m\s+(?P<p>project)(?![\w-])"),  # python -m project, -m project.cli
    re.compile(r"\bimport\s+(?P<p>project)(?![\w-])"),  # import project
    re.compile(r"\bfrom\s+(?P<p>project)(?=\s+import\b)"),  # from project import x
    re.compile(r"(?<![\w.-])(?P<p>project)\.(?=[A-Za-z_])"),  # project.model.ConvNet
    re.compile(r"(?<![\w-])(?<![\w-]\.)(?P<p>project)/"),  # project/model/, ./project/
    re.compile(r"(?<![A-Za-z0-9_])(?P<p>PROJECT)_(?=[A-Z0-9])"),  # PROJECT_RUN_DIR
)
# "project", 'project.*': a whole string literal, but not a subscript key (x["project"]) or a dict key.
STRING = re.compile(r"""(?<![\w\])}]\[)(?P<q>["'])(?P<p>project)(?:\.\*|\*)?(?P=q)(?!\s*(?::|=(?!=)))""")
YAML_VALUE = re.compile(r"""^\s*(?:-\s+)?[\w.-]+\s*:\s+(?P<q>["']?)(?P<p>project)(?P=q)\s*(?:#.*)?$""")
YAML_ITEM = re.compile(r"""^\s*-\s+(?P<q>["']?)(?P<p>project)(?P=q)\s*(?:#.*)?$""")
CFG_HEADER = re.compile(r"^\s*\[[\w.:-]*-(?P<p>project)(?=[.\]])")  # [mypy-project.*]
CFG_ASSIGN = re.compile(r"^(?P<key>[\w.:-]+?\s*[=:]\s*)(?P<value>.*)$")
CFG_NAME_LIST = re.compile(r"^[\w.*:/-]+(?:\s*,\s*[\w.*:/-]+)*\s*,?\s*$")  # project, project.*
CFG_ITEM = re.compile(r"(?<![\w.-])(?P<p>project)(?![\w-])")
SHELL_WORD = re.compile(r"""(?<![^\s=,"'/(])(?P<p>project)(?![^\s,;"')/])""")  # mypy project tests
SHELL_COMMENT = re.compile(r"(?:^|\s)#")
SHELL_ECHO = re.compile(r"^\s*[@-]*\s*(?:echo|printf)\b")
MD_TITLE = re.compile(r"^#\s+(?P<p>project)(?=\s*$|:|\s+[-\u2013\u2014])")
MD_FENCE = re.compile(r"^\s*(?:```|~~~)\s*(?P<lang>[\w+-]*)")
FENCE_KIND = {
    **dict.fromkeys(("bash", "sh", "shell", "console", "zsh", "make", "makefile"), "shell"),
    **dict.fromkeys(("python", "py", "pycon", "python3"), "python"),
    **dict.fromkeys(("yaml", "yml"), "yaml"),
    **dict.fromkeys(("ini", "cfg"), "cfg"),
    "toml": "toml",
    "json": "json",
}


def _spans(regex: re.Pattern[str], text: str, offset: int = 0) -> list[tuple[int, int]]:
    return [(m.start("p") + offset, m.end("p") + offset) for m in regex.finditer(text)]


def _cfg_spans(line: str) -> list[tuple[int, int]]:
    spans = _spans(CFG_HEADER, line)
    stripped = line.strip()
    if not stripped or stripped[0] in "#;[":
        return spans
    if line[:1].isspace():  # a continuation line of a multi-line value
        start, value = len(line) - len(line.lstrip()), stripped
    else:
        m = CFG_ASSIGN.match(line)
        if m is None:
            return spans
        start, value = m.start("value"), m.group("value")
    if CFG_NAME_LIST.match(value):
        spans += _spans(CFG_ITEM, value, start)
    return spans


def _shell_spans(line: str) -> list[tuple[int, int]]:
    comment = SHELL_COMMENT.search(line)
    code = line[: comment.start()] if comment else line
    spans = _spans(STRING, code)
    if not SHELL_ECHO.match(code):
        spans += _spans(SHELL_WORD, code)
    return spans


def line_spans(line: str, kind: str) -> list[tuple[int, int]]:
    """Where `project` (or `PROJECT` of PROJECT_) names the package in one line of a file of `kind`."""
    spans = [span for regex in COMMON for span in _spans(regex, line)]
    if kind in ("python", "toml", "json"):
        spans += _spans(STRING, line)
    elif kind == "yaml":
        spans += _spans(STRING, line) + _spans(YAML_VALUE, line) + _spans(YAML_ITEM, line)
    elif kind == "cfg":
        spans += _spans(STRING, line) + _cfg_spans(line)
    elif kind in ("make", "shell"):
        spans += _shell_spans(line)
    elif kind == "markdown":
        spans += _spans(MD_TITLE, line)
    return sorted(set(spans))


def rewrite_line(line: str, kind: str, name: str) -> str:
    spans = line_spans(line, kind)
    if not spans:
        return line
    out: list[str] = []
    last = 0
    for start, end in spans:
        out += [line[last:start], name.upper() if line[start:end].isupper() else name]
        last = end
    tail = line[last:]
    delta = sum(len(name) - (end - start) for start, end in spans)
    pad = ALIGNED_COMMENT.search(tail)
    if delta and pad:  # keep a column of trailing comments aligned with the lines around it
        width = max(2, len(pad.group()) - delta)
        tail = tail[: pad.start()] + " " * width + tail[pad.end() :]
    return "".join(out) + tail


def kind_of(rel: str, text: str) -> str:
    path = PurePosixPath(rel)
    suffix, base = path.suffix.lower(), path.name
    first = text.split("\n", 1)[0]
    if suffix in (".py", ".pyi") or (first.startswith("#!") and "python" in first):
        return "python"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix in (".cfg", ".ini") or base == ".flake8":
        return "cfg"
    if suffix == ".toml":
        return "toml"
    if suffix == ".json":
        return "json"
    if base in ("Makefile", "makefile", "GNUmakefile") or suffix == ".mk":
        return "make"
    if suffix in (".sh", ".bash", ".zsh") or re.match(r"#!.*\b(?:ba|z|da)?sh\b", first):
        return "shell"
    if suffix in (".md", ".markdown"):
        return "markdown"
    return "text"


def rewrite_text(text: str, kind: str, name: str) -> str:
    lines = text.split("\n")
    fence: str | None = None  # inside a fenced Markdown block: the kind of its code
    for i, raw in enumerate(lines):
        line, cr = (raw[:-1], "\r") if raw.endswith("\r") else (raw, "")
        line_kind = kind
        if kind == "markdown":
            m = MD_FENCE.match(line)
            if m:
                fence = None if fence is not None else FENCE_KIND.get(m.group("lang").lower(), "text")
                continue
            line_kind = fence or "markdown"
        lines[i] = rewrite_line(line, line_kind, name) + cr
    return "\n".join(lines)


# -- the plan: every check first, then every change computed in memory --------------------------------


@dataclass
class FileChange:
    rel: str
    old: str
    new: str

    def changed_lines(self) -> list[tuple[int, str, str]]:
        pairs = zip(self.old.split("\n"), self.new.split("\n"), strict=True)
        return [(n, a, b) for n, (a, b) in enumerate(pairs, 1) if a != b]


@dataclass
class Plan:
    root: Path
    name: str
    git: bool
    changes: list[FileChange] = field(default_factory=list)
    kept: list[tuple[str, int, str]] = field(default_factory=list)  # prose lines still saying "project"
    long_lines: list[tuple[str, int]] = field(default_factory=list)
    warning: str | None = None

    def moved(self, rel: str) -> str:
        """Where the file `rel` is after the move (project/x.py -> NAME/x.py): what the notes print."""
        return f"{self.name}/{rel.removeprefix(OLD + '/')}" if rel.startswith(f"{OLD}/") else rel


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True)


def is_git_repo(root: Path) -> bool:
    return shutil.which("git") is not None and _git(root, "rev-parse", "--show-toplevel").returncode == 0


def candidate_files(root: Path, git: bool) -> list[str]:
    """Relative POSIX paths of the files to consider: git's tracked and untracked-but-not-ignored files,
    or, outside git, a walk that skips environments, outputs and caches."""
    if git:
        out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        if out.returncode != 0:
            raise Refusal(f"`git ls-files` failed in {root}: {out.stderr.decode(errors='replace').strip()}")
        return sorted({p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p})
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        top = here == root
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_ANY and not d.endswith(".egg-info") and not (top and d in SKIP_TOP)
        )
        files += [(here / f).relative_to(root).as_posix() for f in filenames]
    return sorted(files)


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary, non-UTF-8, linked or missing file (left untouched)."""
    if path.is_symlink() or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def line_length(root: Path) -> int | None:
    try:
        config = tomllib.loads((root / "pyproject.toml").read_text())
        value = config["tool"]["ruff"]["line-length"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, int) else None


def _installed_location(name: str, root: Path) -> str | None:
    """Where `import NAME` would already find a module or package, ignoring this repository's own
    package (a re-run after an editable reinstall) and this script's folder."""
    own = {root.resolve(), Path(__file__).resolve().parent}
    saved = sys.path[:]
    try:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in own]
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    finally:
        sys.path[:] = saved
    if spec is None:
        return None
    locations = [*(spec.submodule_search_locations or []), *([spec.origin] if spec.origin else [])]
    package = (root / name).resolve()
    for location in locations:
        path = Path(location).resolve()
        if path == package or package in path.parents:
            return None
    return locations[0] if locations else "built in"


def check_name(name: str, root: Path) -> None:
    if not name.isidentifier():
        raise Refusal(
            f"{name!r} is not a valid Python package name: use letters, digits and underscores, not "
            "starting with a digit (for example `make rename NAME=my_net`)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise Refusal(f"{name!r} is a Python keyword, so `import {name}` cannot work: choose another name")
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        raise Refusal(
            f"{name!r} is a standard-library module: your package would hide it, or be hidden by it "
            f"(`import {name}`); choose another name"
        )
    location = _installed_location(name, root)
    if location is not None:
        raise Refusal(
            f"{name!r} is already importable here ({location}): your package would shadow it, or be "
            "shadowed by it; choose another name"
        )


def check_target(name: str, root: Path, git: bool) -> None:
    for target in (root / name, root / f"{name}.py"):
        if target.exists() or target.is_symlink():
            raise Refusal(f"{target} already exists: choose another name, or move it out of the way first")
    if git:
        ignored = _git(root, "check-ignore", "--no-index", "-v", "--", f"{name}/__init__.py")
        if ignored.returncode == 0:
            rule = ignored.stdout.decode(errors="replace").split("\t")[0].strip()
            raise Refusal(
                f"git ignores {name}/ ({rule}), so the package would never be committed: choose another name"
            )
    elif name in SKIP_TOP:
        raise Refusal(f"{name}/ is where this template keeps environments or outputs: choose another name")


def check_clean(root: Path) -> None:
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=no", "--", ".")
    if status.returncode != 0:
        raise Refusal(f"`git status` failed in {root}: {status.stderr.decode(errors='replace').strip()}")
    records = status.stdout.decode("utf-8", "surrogateescape").split("\0")
    entries = [e[3:] for e in records if len(e) > 3 and e[2] == " "]  # "XY path"; a rename adds "old"
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise Refusal(
            f"the git tree has uncommitted changes ({shown}): commit or stash them first, so that the "
            "rename is one reviewable change that `git checkout .` can undo"
        )


def make_plan(name: str, root: Path, dry_run: bool = False) -> Plan | None:
    """Check everything and compute every change; None when there is nothing to do. A dry run only
    warns about uncommitted changes, which the real run refuses."""
    if name == OLD and name.isidentifier():
        return None
    check_name(name, root)
    if not (root / OLD).is_dir():
        if (root / name).is_dir():
            return None  # renamed already
        raise Refusal(f"there is no {OLD}/ package in {root} to rename: pass the template's root with --root")
    git = is_git_repo(root)
    check_target(name, root, git)
    plan = Plan(root=root, name=name, git=git)
    if git:
        try:
            check_clean(root)
        except Refusal as e:
            if not dry_run:
                raise
            plan.warning = f"{e}. The real run refuses until then."
    limit = line_length(root)
    for rel in candidate_files(root, git):
        if rel in SELF:
            continue
        old = read_text(root / rel)
        if old is None:
            continue
        kind = kind_of(rel, old)
        new = rewrite_text(old, kind, name)
        new_lines = new.split("\n")
        plan.kept += [(rel, n, line.strip()) for n, line in enumerate(new_lines, 1) if PROSE.search(line)]
        if new == old:
            continue
        change = FileChange(rel, old, new)
        plan.changes.append(change)
        if limit is not None and kind == "python":
            plan.long_lines += [(rel, n) for n, a, b in change.changed_lines() if len(b) > limit >= len(a)]
    return plan


# -- output and writing -------------------------------------------------------------------------------


def _print_plan(plan: Plan, dry_run: bool) -> None:
    verb = "would " if dry_run else ""
    print(f"{verb}move    {OLD}/ -> {plan.name}/")
    for change in plan.changes:
        lines = change.changed_lines()
        print(f"{verb}change  {change.rel}  ({len(lines)} line{'s' * (len(lines) != 1)})")
        if dry_run:
            for n, a, b in lines:
                print(f"    {n:>4} - {a.strip()}\n         + {b.strip()}")


def _print_notes(plan: Plan, dry_run: bool) -> None:
    path = (lambda rel: rel) if dry_run else plan.moved  # the paths the user can open now
    if plan.kept:
        print(f"\nLeft as prose or as a key name ({len(plan.kept)} lines; review them):")
        for rel, n, line in plan.kept:
            print(f"  {path(rel)}:{n}: {line}")
    if plan.long_lines:
        where = ", ".join(f"{path(rel)}:{n}" for rel, n in plan.long_lines)
        print(f"\nNow longer than the configured line length: {where}. Shorten them, or run `make style`.")
    if dry_run:
        print("\nDry run: nothing was written." + (f"\nNote: {plan.warning}" if plan.warning else ""))
        return
    python = plan.root / "venv" / "bin" / "python"
    pip = f"{python.relative_to(plan.root)} -m pip" if python.exists() else "python -m pip"
    print(
        f"\nRenamed {OLD} to {plan.name}. Next:\n"
        f"  {pip} uninstall -y {OLD} && {pip} install --no-deps --no-build-isolation -e .\n"
        "      (the editable install still points at the old folder)\n"
        "  make style && make test-fast     (re-sorts imports if the new name sorts differently)\n"
        + ("  git add -A && git diff --cached --stat     then commit\n" if plan.git else "")
    )
    if (plan.root / "runs").is_dir():
        print(
            f"Runs already under runs/ still name {OLD}.* classes in their config.yaml and checkpoints;\n"
            "they were not rewritten."
        )


def apply(plan: Plan) -> None:
    for change in plan.changes:
        (plan.root / change.rel).write_bytes(change.new.encode("utf-8"))
    (plan.root / OLD).rename(plan.root / plan.name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Rename the package {OLD}/ to NAME and rewrite every code reference to it.",
    )
    parser.add_argument("name", metavar="NAME", help="the new package name, a Python identifier (e.g. mynet)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the template's root (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(None if argv is None else list(argv))
    root: Path = args.root.resolve()
    name: str = args.name
    try:
        plan = make_plan(name, root, args.dry_run)
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if plan is None:
        print(f"Nothing to do: the package in {root} is already named {name}/.")
        return 0
    _print_plan(plan, args.dry_run)
    if not args.dry_run:
        apply(plan)
    _print_notes(plan, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
