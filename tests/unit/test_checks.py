"""System checks: a misconfiguration is reported by ``manage.py check``, not by a hung workflow."""

from types import SimpleNamespace

import django
import pytest
from django.core import checks as django_checks
from django.db import connection

from django_dyrygent import checks
from django_dyrygent.conf import DEFAULTS, SETTINGS

#: A Celery app with a broker but no result backend, for W004.
#: The same with a result backend.


def ids(messages):
    return [m.id for m in messages]


def test_check_settings__defaults_and_test_settings_pass():
    assert checks.check_settings() == []


@pytest.mark.parametrize(
    "name, value",
    [
        ("TICK_INTERVAL", "10"),
        ("MAX_PROCESSING_TIME", None),
        ("REQUEUE_AFTER", [60]),
        ("MAX_RESULT_BYTES", 1.5),
        ("RECONCILE_BATCH", True),  # bool is an int subclass, but not a batch size
        ("CELERY_APP", 42),
        ("STALE_AFTER", "60s"),
        ("EVENT_LOG", 1),
    ],
)
def test_check_settings__wrong_type_is_e002_naming_the_setting(settings, name, value):
    setattr(settings, f"DYRYGENT_{name}", value)
    (error,) = checks.check_settings()
    assert error.id == "django_dyrygent.E002"
    assert error.level == django_checks.ERROR
    assert f"DYRYGENT_{name}" in error.msg and repr(value) in error.msg
    assert repr(DEFAULTS[name]) in error.hint


def test_check_settings__every_setting_has_a_type_and_a_valid_default():
    assert [s.name for s in SETTINGS] == list(DEFAULTS)
    for setting in SETTINGS:
        assert setting.problem(setting.default) is None, setting.name


def test_check_settings__accepts_ints_for_float_settings(settings):
    settings.DYRYGENT_TICK_INTERVAL = 5
    settings.DYRYGENT_CELERY_APP = "tests.celery_app.app"
    assert checks.check_settings() == []


@pytest.mark.django_db  # run_checks(): on Django 6 SQLite's JSONField check queries the database
def test_check_settings__errors_reach_manage_py_check(settings):
    settings.DYRYGENT_TICK_INTERVAL = "soon"
    assert "django_dyrygent.E002" in ids(django_checks.run_checks())


def fake_connection(monkeypatch, vendor, options):
    from django_dyrygent.models import Workflow

    conn = SimpleNamespace(vendor=vendor, settings_dict={"OPTIONS": options})
    monkeypatch.setattr(Workflow, "write_connection", classmethod(lambda cls: conn))


@pytest.mark.parametrize("options", [{}, None, {"timeout": 20}, {"transaction_mode": "DEFERRED"}])
def test_check_database__sqlite_without_immediate_transactions_is_w001(monkeypatch, options):
    fake_connection(monkeypatch, "sqlite", options)
    (warning,) = checks.check_database()
    assert warning.id == "django_dyrygent.W001" and warning.level == django_checks.WARNING
    assert "IMMEDIATE" in warning.hint


def test_check_database__sqlite_with_immediate_transactions_passes(monkeypatch):
    fake_connection(monkeypatch, "sqlite", {"transaction_mode": "IMMEDIATE", "timeout": 20})
    assert checks.check_database() == []


@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
def test_check_database__databases_with_row_locks_pass(monkeypatch, vendor):
    fake_connection(monkeypatch, vendor, {})
    assert checks.check_database() == []


def test_check_database__the_test_database_is_configured_right():
    """tests/settings.py sets IMMEDIATE for SQLite; PostgreSQL and MySQL/MariaDB need nothing.

    Django 4.2 cannot set it, so there SQLite keeps its warning.
    """
    old_django_sqlite = connection.vendor == "sqlite" and django.VERSION < (5, 1)
    assert ids(checks.check_database()) == (["django_dyrygent.W001"] if old_django_sqlite else [])
    assert connection.vendor in ("sqlite", "postgresql", "mysql")


@pytest.mark.django_db  # run_checks(): on Django 6 SQLite's JSONField check queries the database
def test_check_celery__no_result_backend_is_w004(settings):
    settings.DYRYGENT_CELERY_APP = "tests.conftest.no_backend_app"
    assert "django_dyrygent.W004" in ids(checks.check_celery())
    assert "django_dyrygent.W004" in ids(django_checks.run_checks())


def test_check_celery__a_result_backend_silences_w004(settings):
    settings.DYRYGENT_CELERY_APP = "tests.conftest.backend_app"
    assert "django_dyrygent.W004" not in ids(checks.check_celery())


def test_check_celery__the_test_app_passes():
    """The suite's app (django-db results, configured broker) raises nothing."""
    assert checks.check_celery() == []


def test_check_celery__unloadable_app_is_e001(settings):
    settings.DYRYGENT_CELERY_APP = "tests.no_such_module.app"
    (error,) = checks.check_celery()
    assert error.id == "django_dyrygent.E001" and "no_such_module" in error.msg


@pytest.mark.parametrize("vendor, warned", [("mysql", True), ("postgresql", False), ("sqlite", False)])
def test_check_connection_reuse__warns_when_workers_reconnect_for_every_task(monkeypatch, vendor, warned):
    """A regular check, MySQL/MariaDB only: on PostgreSQL the hot path has its own connection."""
    from types import SimpleNamespace

    from django_dyrygent import checks as dy_checks
    from django_dyrygent.models import Workflow

    monkeypatch.setattr(Workflow, "write_connection", classmethod(lambda cls: SimpleNamespace(vendor=vendor)))
    monkeypatch.setattr("django_dyrygent.conf.get_celery_app", lambda: SimpleNamespace(conf={}))
    found = dy_checks.check_connection_reuse()
    if warned:
        (warning,) = found
        assert warning.id == "django_dyrygent.W005" and "CELERY_DB_REUSE_MAX" in warning.msg
        assert "CELERY_DB_REUSE_MAX = 1000" in warning.hint and "CONN_HEALTH_CHECKS = True" in warning.hint
    else:
        assert found == []
    monkeypatch.setattr(
        "django_dyrygent.conf.get_celery_app",
        lambda: SimpleNamespace(conf={"CELERY_DB_REUSE_MAX": 1000}),
    )
    assert dy_checks.check_connection_reuse() == []
    from django.core.checks.registry import registry

    assert dy_checks.check_connection_reuse in registry.registered_checks
    assert dy_checks.check_connection_reuse not in registry.deployment_checks


def test_check_liveness__a_worker_timeout_under_three_heartbeats_is_w006(settings):
    assert checks.check_liveness() == []
    settings.DYRYGENT_LIVENESS = True
    settings.DYRYGENT_HEARTBEAT_INTERVAL = 5
    settings.DYRYGENT_WORKER_TIMEOUT = 10
    (warning,) = checks.check_liveness()
    assert warning.id == "django_dyrygent.W006" and "DYRYGENT_WORKER_TIMEOUT (10s)" in warning.msg
    settings.DYRYGENT_WORKER_TIMEOUT = 15
    assert checks.check_liveness() == []
    settings.DYRYGENT_LIVENESS = False
    settings.DYRYGENT_WORKER_TIMEOUT = 1
    assert checks.check_liveness() == []


def test_check_required_apps__passes_with_auth_and_contenttypes():
    assert checks.check_required_apps() == []


def test_check_required_apps__names_each_missing_app_as_e005(monkeypatch):
    from django.apps import apps

    installed = apps.is_installed
    monkeypatch.setattr(apps, "is_installed", lambda name: name != "django.contrib.auth" and installed(name))
    (error,) = checks.check_required_apps()
    assert error.id == "django_dyrygent.E005"
    assert "django.contrib.auth" in error.msg and "contenttypes" not in error.msg
    assert "'django.contrib.auth'" in error.hint
