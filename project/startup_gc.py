"""Python's cycle collector during a command's start-up: no full pass over the imports' objects.

The collector makes a full pass over every object alive after every 10th pass over the younger ones.
By the end of a command's imports (torch, Lightning, torchmetrics, W&B and their dependencies) that is
~500 000 objects: 8 full passes, ~1.4 s of a 2-core CPU on every run, DDP rank and sweep trial, each
freeing a few hundred objects. `python -m project` (and a sweep's spare trial process) holds the full
passes back until its imports are done; the young passes, which free nearly all of the imports'
garbage, go on as usual. Then what the imports left (modules, classes, functions: alive until the
process ends) is frozen, so no later pass looks through it again, and full passes run as usual over
whatever comes after.

    hold_full_collections()      # first thing in the process
    import project.cli           # the imports
    release_full_collections()   # then the command
"""

from __future__ import annotations

import gc

HELD = 1_000_000_000  # middle-generation passes before a full one, while held: never reached
_threshold: int | None = None  # the interpreter's own, while held


def hold_full_collections() -> None:
    global _threshold
    if _threshold is None:
        young, middle, _threshold = gc.get_threshold()
        gc.set_threshold(young, middle, HELD)


def release_full_collections() -> None:
    """Freeze the objects alive now and let full passes run again. A no-op unless held (a test that
    calls __main__.dispatch in its own process)."""
    global _threshold
    if _threshold is not None:
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, _threshold)
        _threshold = None
