"""Files that land whole: every file a run writes (checkpoints, split.json, metrics.json, configs)
goes to a temporary file beside its target, is flushed to disk and renamed over the target. A rename
within one folder is atomic, so a reader, or a run killed mid-write, never sees half a file.

The temporary file gets the mode any new file would (0666 less the umask), not `mkstemp`'s 0600,
so a group-shared runs folder stays readable to the group.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def new_file_mode() -> int:
    """0666 less this process's umask: the mode `open()` gives a new file."""
    try:  # Linux reports the umask without changing it (os.umask would, for a moment, for all threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing ("w" or "wb"); on a clean exit it is synced
    and renamed over `path`, on an error removed, leaving any earlier `path` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
