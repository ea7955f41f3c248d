"""Database connections of long-lived worker processes: usable before each step, retried after a blip.

Celery's Django fix-up closes a worker's connections only every
``CELERY_DB_REUSE_MAX`` tasks and never asks Django whether they still work,
so after a database restart (or ``pg_terminate_backend``) a pool child kept
a dead connection and failed every step for minutes. Every engine step run
from a worker goes through ``run``: a connection that saw an error and no
longer answers is closed first, and a step that fails with
OperationalError / InterfaceError is retried on a fresh connection, with
backoff, for a bounded time.

It also cuts long id lists into batches a connection accepts (``chunks``),
and says whether this process is a worker (``serve_worker``, ``in_worker``).
It imports nothing of the package: the connection engine steps write
through is ``models.Workflow.write_connection()``.
"""

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("django_dyrygent.db")

# The pid of the Celery worker that called ``serve_worker``; its forked pool children inherit it.
_worker_pid: int | None = None

T = TypeVar("T")

RETRYABLE = (OperationalError, InterfaceError)
#: First pause after a failed attempt; doubled up to ``MAX_PAUSE``.
FIRST_PAUSE = 0.2
MAX_PAUSE = 5.0


def drop_broken_connections() -> None:
    """Close every connection that saw an error and fails a ping, or that is closed server-side.

    Unlike ``close_old_connections`` it keeps healthy connections open
    whatever CONN_MAX_AGE says, so CELERY_DB_REUSE_MAX keeps its meaning.
    Connections inside an atomic block are left alone (closing one would
    break the caller's transaction).
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue
        if conn.errors_occurred or getattr(conn.connection, "closed", False):
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                _close(conn)


def _close(conn: BaseDatabaseWrapper) -> None:
    try:
        conn.close()
    except DatabaseError:
        # Closing a connection the server already dropped may raise; forget it anyway.
        conn.connection = None


def run(func: Callable[..., T], *args: Any, retry_for: float = 10.0, what: str = "an engine step", **kwargs: Any) -> T:
    """Call ``func`` on a usable connection; on a connection error close, wait, retry until ``retry_for`` s.

    The first retry is immediate (a dropped connection is the usual cause);
    the last error is raised once the time is up. ``func`` must be safe to
    repeat: an engine step is one transaction, rolled back when it fails.
    """
    deadline = time.monotonic() + retry_for
    pause = FIRST_PAUSE
    first = True
    while True:
        drop_broken_connections()
        try:
            return func(*args, **kwargs)
        except RETRYABLE as exc:
            for conn in connections.all(initialized_only=True):
                if not conn.in_atomic_block:
                    _close(conn)
            if first:
                # The usual case: a connection the server dropped; a fresh one works at once.
                first = False
                continue
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("Database unavailable during %s (%s); retrying in %.1fs", what, exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)


#: SQLSTATE of a deadlock victim (PostgreSQL), MySQL/MariaDB's error number for one.
_DEADLOCK_SQLSTATE = "40P01"
_DEADLOCK_MYSQL = 1213


def is_deadlock(exc: BaseException) -> bool:
    """Whether the database chose this transaction as a deadlock's victim (it rolled it back whole)."""
    cause = exc.__cause__ or exc
    if getattr(cause, "sqlstate", None) == _DEADLOCK_SQLSTATE or getattr(cause, "pgcode", None) == _DEADLOCK_SQLSTATE:
        return True
    args: tuple[Any, ...] = tuple(getattr(cause, "args", ()))
    return bool(args) and args[0] == _DEADLOCK_MYSQL


def chunks(items: Iterable[T], connection: BaseDatabaseWrapper, size: int | None = None) -> Iterator[list[T]]:
    """``items`` in lists short enough for one IN (...) on ``connection``."""
    if size is None:
        limit = connection.features.max_query_params
        size = max(100, (limit or 20000) - 50)
    listed = list(items)
    for i in range(0, len(listed), size):
        yield listed[i:i + size]


def serve_worker() -> None:
    """Note that this process is a Celery worker (``worker_init``, before the pool forks).

    The hot path then runs its statements on connections of its own
    (``hotpath._connection``), which outlive Celery closing Django's around
    every task. Whatever the worker's other settings: only being a worker
    matters. Forked pool children inherit the mark; each opens its own
    connections (``hotpath`` compares the pid that opened one with its own).
    """
    global _worker_pid
    _worker_pid = os.getpid()


def in_worker() -> bool:
    """Whether this process is a Celery worker or one of its pool children (``serve_worker``)."""
    return _worker_pid is not None
