"""The README's layout block lists every file of the package, configs, examples, benchmarks, scripts
and CI, and nothing that does not exist."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO

CHECKED = ("project/", "configs/", "examples/", "benchmarks/", "scripts/", ".ci/")


def layout_paths() -> set[str]:
    """Paths named in the README's layout block: two spaces of indent a folder level; a line's names
    (comma-separated, folders ending in /) end at the first run of two or more spaces."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Layout") :]
    block = section[section.index("```\n") + 4 : section.index("\n```", section.index("```\n") + 4)]
    folders: list[str] = []
    paths: set[str] = set()
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = re.split(r"\s{2,}", line.strip())[0]
        del folders[depth:]
        for name in names.split(", "):
            path = "".join(folders) + name
            if name.endswith("/"):
                folders.append(name)
            else:
                paths.add(path)
    return paths


def repo_files() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *CHECKED],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {path for path in listed if (REPO / path).is_file()}  # a deleted, not yet committed file is gone


def test_the_layout_block_lists_exactly_the_files_that_exist() -> None:
    named = {path for path in layout_paths() if path.startswith(CHECKED)}
    files = repo_files()
    assert not files - named, f"in the tree but not in the README's layout: {sorted(files - named)}"
    assert not named - files, f"in the README's layout but not in the tree: {sorted(named - files)}"
