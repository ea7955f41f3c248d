"""System checks: ``manage.py check`` explains a misconfiguration before a workflow hangs."""

from django.conf import settings as django_settings
from django.core.checks import Error, Warning, register
from django.db import connections, router

from .conf import DEFAULTS, PREFIX, TYPES


@register()
def check_settings(app_configs=None, **kwargs):
    errors = []
    for name, types in TYPES.items():
        value = getattr(django_settings, PREFIX + name, DEFAULTS[name])
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            errors.append(
                Error(
                    f"{PREFIX}{name} must be {' or '.join(t.__name__ for t in types)}, "
                    f"not {type(value).__name__} ({value!r}).",
                    hint=f"Set {PREFIX}{name} to a value like {DEFAULTS[name]!r} or remove it.",
                    id="django_dyrygent.E002",
                )
            )
    return errors


@register()
def check_celery(app_configs=None, **kwargs):
    errors = []
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


@register()
def check_database(app_configs=None, **kwargs):
    from .models import Workflow

    conn = connections[router.db_for_write(Workflow)]
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
            hint="Use PostgreSQL in production; with SQLite set OPTIONS={'transaction_mode': "
            "'IMMEDIATE', 'timeout': 20} (Django 5.1+) and few worker processes.",
            id="django_dyrygent.W001",
        )
    ]
