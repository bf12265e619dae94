"""`python -m project [fit|validate|test|predict|tune|runs] ...`; with no arguments, the CIFAR-10 demo."""

import sys
from importlib import import_module

from project.sweep.child import die_with_parent

# Not LightningCLI's commands: each parses its own arguments, and neither imports torch to do it.
OTHER_COMMANDS = {"tune": "project.sweep.command", "runs": "project.runs"}


def dispatch() -> None:
    if sys.argv[1:] and sys.argv[1] in OTHER_COMMANDS:
        import_module(OTHER_COMMANDS[sys.argv[1]]).main(sys.argv[2:])
    else:
        from project.cli import main

        main()


if __name__ == "__main__":
    # In a sweep's trial (sweep/child.py): before the slow imports, so no orphan outlives a kill.
    die_with_parent()
    dispatch()
