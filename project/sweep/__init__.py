"""Sweeps: `python -m project tune` (command.py) runs an Optuna study whose every trial is an ordinary
`fit` in a process and run directory of its own. The search file (space.py), the study's storage
(storage.py), the trial loop (runner.py), what a trial reports from inside its fit (report.py), the
files a study leaves (results.py), and what a trial's process gets from the tune process (child.py)."""
