"""Leave a finished `python -m project` process without the interpreter's teardown.

Once a command is done, CPython still frees every module it imported before the process ends: with
torch, Lightning and their dependencies (~4 000 modules) that is ~2 s of a 2-core CPU on every run,
DDP rank and sweep trial, for nothing anyone sees. `run_then_exit` does what a normal exit does that
matters (wait for non-daemon threads, run the atexit handlers: W&B's finish, logging's flush,
multiprocessing's clean-up; flush every file left open) and then ends the process with `os._exit`.
An uncaught exception is not handled here: it ends the process the usual way, traceback and all.
"""

from __future__ import annotations

import _io
import atexit
import gc
import itertools
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn


def run_then_exit(command: Callable[[], object]) -> NoReturn:
    """Run `command`, then exit with its status (a `SystemExit`'s, as `sys.exit` gives it) quickly."""
    try:
        command()
        code = 0
    except SystemExit as done:
        code = exit_status(done.code)
    exit_quickly(code)


def exit_status(code: object) -> int:
    """The status `sys.exit(code)` ends a process with (a message is printed to stderr, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_quickly(code: int) -> NoReturn:
    for thread in threading.enumerate():  # what Python waits for first at exit
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # then its exit handlers, in the same order
    # Files nobody closed are flushed by the teardown skipped below: flush them here. Finding them means
    # looking at every object (~0.2 s after a fit), so only where some file on disk is still open for
    # writing. The standard streams are flushed always (a pipe's or a terminal's, where that scan is skipped).
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
        _flush(stream)
    if files_open_for_writing():
        for file in open_file_objects():
            _flush(file)
    os._exit(code)


def files_open_for_writing() -> bool:
    """Whether this process holds a regular file open for writing: only then can a file object nobody
    closed hold lines meant for disk. True where that cannot be told (no /proc: macOS, Windows)."""
    try:
        descriptors = [int(fd) for fd in os.listdir("/proc/self/fd")]
        import fcntl
    except (OSError, ImportError):
        return True
    for fd in descriptors:
        try:
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_WRONLY | os.O_RDWR)
            if writable and stat.S_ISREG(os.fstat(fd).st_mode):
                return True
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return False


def open_file_objects() -> Iterator[Any]:
    """Every file object alive. (Found without a Python-level loop over the ~500 000 objects of a
    finished run, and without io.IOBase's ABC check: each would cost ~0.5 s. Every file class, C or
    Python, derives from _io._IOBase.) What `python -m project` froze after its imports
    (startup_gc.py) is back in view first: get_objects lists no frozen object."""
    gc.unfreeze()
    objects = gc.get_objects()
    file_types = {kind for kind in set(map(type, objects)) if _io._IOBase in kind.__mro__}
    return itertools.compress(objects, map(file_types.__contains__, map(type, objects)))


def _flush(file: Any) -> None:
    try:
        if file is not None and not file.closed and file.writable():
            file.flush()
    except (OSError, ValueError):
        pass
