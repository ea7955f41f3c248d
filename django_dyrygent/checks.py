"""System checks: ``manage.py check`` explains a misconfiguration before a workflow hangs.

Ids (documented in docs/troubleshooting.md):

* E001 the Celery app cannot be loaded; W003 no configured Celery app is current;
* E002 a ``DYRYGENT_*`` setting has the wrong type; E004 a number that must be positive is not;
* E003 the worker-side Celery signal receivers are not connected;
* W001 SQLite without IMMEDIATE transactions; W004 no Celery result backend;
* W002 (``check --deploy`` only) the ``django_dyrygent.sweep`` task is not in the beat schedule
  (only with DYRYGENT_LIVENESS off: otherwise the workers sweep);
* W005 Celery workers reconnect to the database for every task (MySQL/MariaDB only: on
  PostgreSQL the engine's hot path has its own connection);
* W006 the worker timeout is too short for the heartbeat interval: live workers would look dead;
* E005 ``django.contrib.auth`` or ``django.contrib.contenttypes`` is not installed (API tokens
  and the event log's actors are users; the admin actions check their permissions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import django
from celery import Celery
from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning, register

from .conf import SETTINGS

#: What Django passes a check: the apps to check, or None for all.
AppConfigs = Sequence[AppConfig] | None

SQLITE_HINT = (
    "Use PostgreSQL in production; with SQLite set OPTIONS={'transaction_mode': 'IMMEDIATE', "
    "'timeout': 20} and few worker processes."
)
# Django 4.2 cannot open SQLite transactions IMMEDIATE: nothing to set, only to know.
SQLITE_HINT_DJANGO_4 = (
    "Use PostgreSQL in production; SQLite transactions can start IMMEDIATE from Django 5.1 on "
    "(OPTIONS={'transaction_mode': 'IMMEDIATE'}); on Django 4.2 keep SQLite to development with "
    "one worker process, or silence the warning (SILENCED_SYSTEM_CHECKS)."
)


@register()
def check_settings(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for setting in SETTINGS:
        value = getattr(django_settings, setting.full_name, setting.default)
        problem = setting.problem(value)
        if problem:
            code, message = problem
            errors.append(
                Error(
                    message,
                    hint=f"Set {setting.full_name} to a value like {setting.default!r} or remove it.",
                    id=f"django_dyrygent.{code}",
                )
            )
    return errors


@register()
def check_worker_hooks(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """Without the receivers, workers never report outcomes and every step waits for a tick."""
    from .worker.handlers import worker_signals_connected

    if worker_signals_connected():
        return []
    return [
        Error(
            "django_dyrygent's Celery signal receivers (task_prerun, task_success, task_failure, "
            "task_retry, task_revoked) are not connected: workers would not report node outcomes, "
            "so workflows would only move on the periodic tick, through the result backend.",
            hint="Keep 'django_dyrygent' in INSTALLED_APPS so its AppConfig.ready() connects them "
            "(django_dyrygent.handlers.connect_worker_signals()), and do not disconnect them.",
            id="django_dyrygent.E003",
        )
    ]


SWEEP_TASK = "django_dyrygent.sweep"


def _beat_schedules_sweep(app: Celery, databases: Sequence[str] | None) -> bool:
    schedule = getattr(app.conf, "beat_schedule", None) or {}
    if any(isinstance(entry, dict) and entry.get("task") == SWEEP_TASK for entry in schedule.values()):
        return True
    # django-celery-beat keeps the schedule in the database; only look when
    # the check run may query it (``check --database``, migrate, runserver...).
    from django.apps import apps

    if not databases or not apps.is_installed("django_celery_beat"):
        return False
    try:
        from django_celery_beat.models import PeriodicTask

        return PeriodicTask.objects.filter(task=SWEEP_TASK, enabled=True).exists()
    except Exception:  # table missing before migrate, database down: say nothing definite
        return True


@register(deploy=True)
def check_sweeper(
    app_configs: AppConfigs = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from .conf import settings

    if settings.LIVENESS:
        return []  # every worker's liveness thread sweeps; beat is not needed
    try:
        from .conf import get_celery_app

        app = get_celery_app()
    except Exception:
        return []  # E001 already reports it
    if _beat_schedules_sweep(app, databases):
        return []
    return [
        Warning(
            f"The {SWEEP_TASK} task is not in the Celery beat schedule. Each running workflow "
            "schedules its own safety-net tick; the sweeper re-ticks workflows whose tick message "
            "was lost (broker restart, purged queue), which would otherwise wait for their next event.",
            hint=f"Add {{'task': '{SWEEP_TASK}', 'schedule': 60.0}} to CELERY_BEAT_SCHEDULE, or run "
            "'manage.py dyrygent_tick' from cron (or 'dyrygent_tick --loop'), then silence this "
            "with SILENCED_SYSTEM_CHECKS = ['django_dyrygent.W002'].",
            id="django_dyrygent.W002",
        )
    ]


@register()
def check_connection_reuse(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """Celery's Django fixup closes every connection around each task unless told otherwise.

    The engine records each node's start and outcome from inside the worker. On
    PostgreSQL those statements run on a connection of the engine's own per
    worker process (``hotpath._connection``), which the fixup does not close:
    nothing to set. On MySQL/MariaDB they run on Django's connection, so every
    node would pay a new connection (2-4x per node in the benchmarks): a
    regular check, since nobody runs ``check --deploy`` for a worker setting.
    SQLite opens a file, which costs nothing worth a warning.
    """
    from .conf import get_celery_app
    from .models import Workflow

    vendor = Workflow.write_connection().vendor
    if vendor in ("postgresql", "sqlite"):
        return []
    try:
        reuse = get_celery_app().conf.get("CELERY_DB_REUSE_MAX")
    except Exception:  # E001 reports an unloadable app
        return []
    if reuse:
        return []
    return [
        Warning(
            "Celery workers close the database connection before and after every task "
            "(CELERY_DB_REUSE_MAX is not set), so each workflow node pays a new connection.",
            hint="Set CELERY_DB_REUSE_MAX = 1000 (connections are then closed every 1,000 tasks) "
            "and CONN_HEALTH_CHECKS = True in DATABASES (a connection broken by a database "
            "restart is then replaced before use). On PostgreSQL the engine needs neither.",
            id="django_dyrygent.W005",
        )
    ]


@register()
def check_liveness(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """A worker timeout of fewer than three heartbeats re-runs nodes of workers that are merely slow to beat."""
    from .conf import settings

    if check_settings() or not settings.LIVENESS:
        return []  # E002/E004 report unusable values
    timeout, interval = float(settings.WORKER_TIMEOUT), float(settings.HEARTBEAT_INTERVAL)
    if timeout >= 3 * interval:
        return []
    return [
        Warning(
            f"DYRYGENT_WORKER_TIMEOUT ({timeout:g}s) is less than three DYRYGENT_HEARTBEAT_INTERVALs "
            f"({interval:g}s): a worker that misses one beat under load would be taken for dead "
            "and its running nodes run a second time.",
            hint="Keep DYRYGENT_WORKER_TIMEOUT at least 3 (default: 6) heartbeat intervals.",
            id="django_dyrygent.W006",
        )
    ]


@register()
def check_celery(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    try:
        from .conf import get_celery_app

        app = get_celery_app()
    except Exception as exc:  # bad DYRYGENT_CELERY_APP path
        return [
            Error(
                f"The Celery app cannot be loaded: {exc}",
                hint="Set DYRYGENT_CELERY_APP to the dotted path of your Celery() instance.",
                id="django_dyrygent.E001",
            )
        ]
    if app.main is None and not getattr(app.conf, "broker_url", None):
        errors.append(
            Warning(
                "No configured Celery app is current: workflows would be sent with Celery's defaults.",
                hint="Import your Celery app in your project's __init__.py (see the example project) "
                "or set DYRYGENT_CELERY_APP.",
                id="django_dyrygent.W003",
            )
        )
    from celery.backends.base import DisabledBackend

    try:
        backend = app.backend
    except Exception:
        backend = None
    if backend is None or isinstance(backend, DisabledBackend):
        errors.append(
            Warning(
                "Celery has no result backend: a node whose completion event is lost can only be "
                "republished, not reconciled from its stored outcome.",
                hint="Set CELERY_RESULT_BACKEND, e.g. 'django-db' with django_celery_results.",
                id="django_dyrygent.W004",
            )
        )
    return errors


#: The apps django_dyrygent's models and permissions are built on.
REQUIRED_APPS = ("django.contrib.contenttypes", "django.contrib.auth")


@register()
def check_required_apps(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """Said once, by name, instead of Django's E300 about a field of ApiToken."""
    from django.apps import apps

    missing = [name for name in REQUIRED_APPS if not apps.is_installed(name)]
    if not missing:
        return []
    return [
        Error(
            f"django_dyrygent needs {' and '.join(missing)} in INSTALLED_APPS: API tokens belong "
            "to users, and the admin's and the API's actions check their permissions.",
            hint="Add " + ", ".join(repr(name) for name in missing) + " to INSTALLED_APPS "
            "(every project made by startproject has them), then run migrate.",
            id="django_dyrygent.E005",
        )
    ]


@register()
def check_database(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    from .models import Workflow

    conn = Workflow.write_connection()
    if conn.vendor != "sqlite":
        return []
    mode = (conn.settings_dict.get("OPTIONS") or {}).get("transaction_mode")
    if mode == "IMMEDIATE":
        return []
    return [
        Warning(
            "SQLite has no row locks; django_dyrygent serialises engine steps through SQLite's "
            "write lock, but other code's transactions may fail with 'database is locked' "
            "under concurrent workers.",
            hint=SQLITE_HINT if django.VERSION >= (5, 1) else SQLITE_HINT_DJANGO_4,
            id="django_dyrygent.W001",
        )
    ]
