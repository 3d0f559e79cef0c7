"""Where studies live: an Optuna RDB storage (SQLite by default, PostgreSQL for many machines) with
heartbeats, its URL shown without the password, and Optuna's own messages kept quiet."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._utils import first_line
from ..errors import InvalidInputError

if TYPE_CHECKING:
    import optuna

# A trial whose process died (SIGKILL, lost machine) stops beating; after GRACE_S others mark it failed.
HEARTBEAT_S = 5
GRACE_S = 20


def redact(url: str) -> str:
    """The storage URL without its password, for logs and reports."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def open_storage(url: str, *, key: str = "tune.storage") -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so trials of killed processes are failed rather than left running.

    Args:
        url: an Optuna RDB URL (``sqlite:///PATH``, ``postgresql://user:password@host/db``).
        key: the recipe key the URL came from, for the error message.

    Raises:
        InvalidInputError: the URL is malformed or the database cannot be reached.
    """
    import optuna
    from optuna.exceptions import ExperimentalWarning

    url = _with_driver(url)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # workers on one machine wait for the file lock
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
        engine["pool_pre_ping"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except Exception as e:  # noqa: BLE001 (drivers raise their own error types for a bad host, login or database)
        raise InvalidInputError(
            f"{key} {redact(url)!r} cannot be opened ({type(e).__name__}: {first_line(e, 200) or type(e).__name__}); give a reachable "
            "Optuna RDB URL (sqlite:///PATH, postgresql://user:password@host/db) or null for a file in the run directory"
        ) from None


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    import importlib.util

    if (
        url.startswith("postgresql://")
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


class _BelowLevel(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


@contextlib.contextmanager
def quiet_optuna(level: int = logging.ERROR) -> Iterator[None]:
    """Hide Optuna's messages below ``level`` while leanml reports trials itself.

    Optuna's verbosity is not touched: a filter sits on the handlers of the ``optuna`` logger for the
    duration and is removed after, whatever the user configured stays as it was.
    """
    handlers = list(logging.getLogger("optuna").handlers)
    quiet = _BelowLevel(level)
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)
