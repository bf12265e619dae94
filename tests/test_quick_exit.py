"""project/quick_exit.py: a finished command leaves without the interpreter's teardown, and still
everything a normal exit does that anyone can see happens: threads finish, exit handlers run, files
are flushed, the status is the one `sys.exit` would give."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from project.quick_exit import exit_status
from tests.conftest import REPO

SCRIPT = """
import atexit, gc, sys, threading, time
from pathlib import Path
from project.quick_exit import run_then_exit

out = Path(sys.argv[1])
kept_open = open(out / "unclosed.txt", "w")  # never closed: its text sits in the buffer
kept_open.write("buffered line\\n")
gc.freeze()  # as `python -m project` does once its imports are done: the file is among the frozen


def late_writer():
    time.sleep(0.3)
    (out / "thread.txt").write_text("written by a thread still running when the command returned")


def command():
    threading.Thread(target=late_writer).start()
    atexit.register(lambda: (out / "atexit.txt").write_text("exit handler ran"))
    print("printed, not flushed", end="")
    {ending}


run_then_exit(command)
raise AssertionError("run_then_exit returned")
"""


@pytest.mark.parametrize(
    ("ending", "status", "stderr"),
    [("return", 0, ""), ("sys.exit(3)", 3, ""), ("sys.exit('bad input: how to fix it')", 1, "bad input")],
)
def test_a_quick_exit_still_does_what_a_normal_exit_does(
    tmp_path: Path, ending: str, status: int, stderr: str
) -> None:
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent(SCRIPT).replace("{ending}", ending))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == status, done.stderr
    assert done.stdout == "printed, not flushed"
    assert stderr in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "unclosed.txt").read_text() == "buffered line\n"
    assert (tmp_path / "thread.txt").is_file()
    assert (tmp_path / "atexit.txt").read_text() == "exit handler ran"


def test_exit_status_is_what_sys_exit_gives(capsys: pytest.CaptureFixture[str]) -> None:
    assert [exit_status(None), exit_status(0), exit_status(2)] == [0, 0, 2]
    assert exit_status("one line") == 1
    assert capsys.readouterr().err == "one line\n"


def test_files_open_for_writing_is_told_from_the_descriptors(tmp_path: Path) -> None:
    """The ~0.2 s search for unclosed file objects runs only while a file on disk is open for writing:
    not for read-only files, pipes or the standard streams (here pipes), and again not once it is closed."""
    script = textwrap.dedent(
        """
        import sys
        from project.quick_exit import files_open_for_writing

        seen = [files_open_for_writing()]
        reading = open(sys.argv[1] + "/read.txt")
        seen.append(files_open_for_writing())
        writing = open(sys.argv[1] + "/written.txt", "a")
        seen.append(files_open_for_writing())
        writing.close()
        seen.append(files_open_for_writing())
        print(seen)
        """
    )
    (tmp_path / "read.txt").write_text("")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[False, False, True, False]", done.stderr
