"""What a trial's process gets from the `tune` process that started it: the study to report to, through
one environment variable (so the trial's saved config stays an ordinary fit's, and a storage password
never lands in a config file or in W&B), and a lifeline: the trial ends when `tune` ends, however it
ends, SIGKILL included, so a killed sweep leaves no orphan training on."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

TRIAL_ENV = "PROJECT_TRIAL"  # {"storage", "study", "trial_id", "objective"}; DDP ranks inherit it
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PRUNED_AT = "pruned_at_epoch"  # trial user attributes TrialReport sets and the tune process reads
MISSING = "objective_missing"


def trial_context() -> dict[str, Any] | None:
    """The study and trial this process reports to, or None outside a sweep."""
    text = os.environ.get(TRIAL_ENV)
    return json.loads(text) if text else None


def die_with_parent() -> None:
    """In a trial's processes (and the DDP ranks they start), ask Linux to kill this process when its
    parent dies. Elsewhere (outside a sweep, or not on Linux) a no-op."""
    if TRIAL_ENV not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)
