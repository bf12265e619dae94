"""Where a study lives: Optuna's RDBStorage on a SQLAlchemy URL, a SQLite file in the study directory by
default (nothing to start), or a shared server (`--storage postgresql://user:pass@host/db`) that tune
processes on many machines join.

The tune process records a heartbeat for each running trial; a trial whose heartbeat stops for
GRACE_S seconds (its machine died) is marked failed by the next worker that asks for a trial
(Optuna's `fail_stale_trials`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from project.errors import UserError

HEARTBEAT_S = 10
GRACE_S = 60
CONNECT_TIMEOUT_S = 10  # an unreachable server fails well within 15 s
CREATE_ATTEMPTS = 5
SQLITE_BUSY_S = 60  # workers and trials write to one SQLite file; wait for a lock rather than fail


def sqlite_url(study_dir: Path) -> str:
    return f"sqlite:///{study_dir.resolve() / 'study.db'}"


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url.split("@")[-1]


def open_storage(url: str, heartbeat: bool = False) -> optuna.storages.RDBStorage:
    """Connect (creating Optuna's tables on first use); one UserError line when that is not possible."""
    try:
        dialect = make_url(url).get_dialect().name
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise UserError(
            f"--storage {shown(url)} is not a database URL Optuna can use ({_first_line(e)}); "
            "e.g. sqlite:///runs/study.db or postgresql://user:password@host:5432/db"
        ) from None
    connect_args: dict[str, Any] = {}
    if dialect == "sqlite":
        connect_args = {"timeout": SQLITE_BUSY_S}
    elif dialect in ("postgresql", "mysql"):
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
    beat: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S} if heartbeat else {}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args}, **beat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Workers started together (a SLURM array) race to create Optuna's tables in a new
            # database; the losers find them made a moment later.
            if attempt == CREATE_ATTEMPTS - 1:
                raise _unusable(url, e) from None
            time.sleep(0.5 + random.random())
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            raise _unusable(url, e) from None
    raise AssertionError("unreachable")


def _unusable(url: str, e: BaseException) -> UserError:
    return UserError(
        f"cannot use the study storage {shown(url)}: {_first_line(e)}; check that the server runs and the "
        "URL (host, port, user, database) is right, and that its driver is installed (requirements.txt has "
        "PostgreSQL's), or drop --storage for a SQLite file in the study directory"
    )


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
