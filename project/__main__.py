"""`python -m project [fit|validate|test|predict|tune|runs|cv|lr_find|scale_batch_size|export] ...`;
with no arguments, the CIFAR-10 demo."""

import sys
from importlib import import_module

from project.quick_exit import run_then_exit
from project.startup_gc import hold_full_collections, release_full_collections
from project.sweep.child import die_with_parent
from project.wandb_setup import import_wandb_early

# Not LightningCLI's own commands: "module[:function]" (default main), called with the arguments after
# the command's name.
OTHER_COMMANDS = {
    "tune": "project.sweep.command",  # sweeps on Optuna
    "runs": "project.runs",  # the table of run directories
    "cv": "project.cv",  # k-fold cross-validation, one fit per fold
    "lr_find": "project.finders:lr_find",  # Lightning's Tuner: learning rate ...
    "scale_batch_size": "project.finders:scale_batch_size",  # ... and largest batch size
    "export": "project.export",  # ONNX / torch.export files from a checkpoint
}


def dispatch() -> None:
    if sys.argv[1:] and sys.argv[1] in OTHER_COMMANDS:
        module, _, function = OTHER_COMMANDS[sys.argv[1]].partition(":")
        command = getattr(import_module(module), function or "main")
        release_full_collections()
        command(sys.argv[2:])
    else:
        from project.cli import main

        release_full_collections()
        main()


if __name__ == "__main__":
    hold_full_collections()  # until the imports are done (dispatch): see startup_gc.py
    # In a sweep's trial (sweep/child.py): before the slow imports, so no orphan outlives a kill.
    die_with_parent()
    import_wandb_early(sys.argv[1:])  # before torch: see there
    run_then_exit(dispatch)  # without the interpreter's ~2 s teardown of torch and Lightning
