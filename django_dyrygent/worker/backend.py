"""The django-db result backend inside a worker: each read and write on a usable connection.

A worker's main process writes to the result backend outside any task:
Celery's ``revoke`` control command reads each revoked task's state and
stores ``REVOKED`` (``celery.worker.control.revoke``), on the main thread's
Django connection. Nothing ever checks that connection: after a database
restart every revoke failed there (``Failed to mark task ... as revoked in
backend``) for the life of the worker, and so did any other backend access
of that thread. django-celery-results retries only on InterfaceError, and
only with ``result_backend_always_retry``.

``guard_database_backend`` routes the backend's own database calls through
``engine.db.run`` at ``worker_init``, as every engine step already is: a
connection that saw an error and no longer answers is closed first, and a
call that fails on a dropped connection is made again on a fresh one, for a
few seconds at most (the consumer thread waits meanwhile). The calls are
safe to repeat: a store is an upsert by task id, the rest read. Inside a
caller's transaction nothing is retried (closing its connection would break
it).
"""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db import connections

from ..engine import db

#: How long a backend call is retried while the database is away: short, it blocks the consumer.
RETRY_FOR = 5.0
#: DatabaseBackend's methods that touch the database (the public ones call these).
GUARDED = ("_store_result", "_get_task_meta_for", "_forget")


def _in_transaction() -> bool:
    return any(conn.in_atomic_block for conn in connections.all(initialized_only=True))


def on_usable_connection(method: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _in_transaction():
            return method(*args, **kwargs)
        return db.run(method, *args, retry_for=RETRY_FOR, what="a result-backend call", **kwargs)

    guarded.dyrygent_guard = True  # type: ignore[attr-defined]
    return guarded


def guard_database_backend(sender: Any = None, **kwargs: Any) -> None:
    """worker_init: wrap django-celery-results' DatabaseBackend (idempotent; nothing without it)."""
    try:
        from django_celery_results.backends.database import DatabaseBackend
    except ImportError:
        return
    for name in GUARDED:
        method = getattr(DatabaseBackend, name, None)
        if method is not None and not getattr(method, "dyrygent_guard", False):
            setattr(DatabaseBackend, name, on_usable_connection(method))
