"""Choosing W&B's mode before any run starts: offline unless asked otherwise, and never a hang.

`python -m project` logs offline by default (no account, no server). With WANDB_MODE=online but no
way to reach the server (no network, or no API key), W&B would retry for minutes or wait for a
login. Instead, the run falls back to offline with a warning saying how to upload it later.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse
from pathlib import Path

CONNECT_TIMEOUT_S = 5.0
DEFAULT_SERVER = "https://api.wandb.ai"


def _server_reachable(url: str) -> bool:
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def choose_wandb_mode() -> str:
    """Set WANDB_MODE for this process (default offline) and return it."""
    mode = os.environ.setdefault("WANDB_MODE", "offline")
    if mode not in ("online", "run"):
        return mode
    server = os.environ.get("WANDB_BASE_URL", DEFAULT_SERVER)
    problem = None
    if not _has_api_key():
        problem = "no API key (WANDB_API_KEY or `wandb login`)"
    elif not _server_reachable(server):
        problem = f"{server} cannot be reached within {CONNECT_TIMEOUT_S:.0f} s"
    if problem is None:
        return mode
    os.environ["WANDB_MODE"] = "offline"
    print(
        f"warning: WANDB_MODE={mode} but {problem}: logging offline instead. "
        f"Upload later with: wandb sync runs/<run>/wandb/offline-run-*",
        file=sys.stderr,
    )
    return "offline"
