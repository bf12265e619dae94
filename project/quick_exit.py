"""Leave a finished `python -m project` process without the interpreter's teardown.

Once a command is done, CPython still frees every module it imported before the process ends: with
torch, Lightning and their dependencies (~4 000 modules) that is ~2 s of a 2-core CPU on every run,
DDP rank and sweep trial, for nothing anyone sees. `run_then_exit` does what a normal exit does that
matters (wait for non-daemon threads, run the atexit handlers: W&B's finish, logging's flush,
multiprocessing's clean-up; flush every open file) and then ends the process with `os._exit`.
An uncaught exception is not handled here: it ends the process the usual way, traceback and all.
"""

from __future__ import annotations

import _io
import atexit
import gc
import itertools
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


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
    # Files nobody closed are flushed by the teardown skipped below: flush them here. (Found without a
    # Python-level loop over the ~500 000 objects of a finished run, and without io.IOBase's ABC check:
    # each would cost ~0.5 s. Every file class, C or Python, derives from _io._IOBase.)
    objects = gc.get_objects()
    file_types = {kind for kind in set(map(type, objects)) if _io._IOBase in kind.__mro__}
    for file in itertools.compress(objects, map(file_types.__contains__, map(type, objects))):
        try:
            if not file.closed and file.writable():
                file.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
