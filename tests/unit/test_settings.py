"""DYRYGENT_* settings are read lazily, so test fixtures and override_settings reach the engine."""

from datetime import timedelta

import pytest
from celery import current_app
from django.test.utils import override_settings

from django_dyrygent import conf, engine
from django_dyrygent.conf import DEFAULTS
from django_dyrygent.engine import messaging
from django_dyrygent.models import Workflow
from tests.celery_app import app as tests_app
from tests.tasks import noop


def test_settings__read_from_django_settings():
    assert conf.settings.TICK_INTERVAL == 30.0  # tests/settings.py


def test_settings__fixture_override_is_seen_after_a_first_read(settings):
    assert conf.settings.TICK_INTERVAL == 30.0  # cached now
    settings.DYRYGENT_TICK_INTERVAL = 7.5
    assert conf.settings.TICK_INTERVAL == 7.5


def test_settings__override_is_undone_when_it_ends():
    with override_settings(DYRYGENT_REQUEUE_AFTER=1.0, DYRYGENT_EVENT_LOG=False):
        assert conf.settings.REQUEUE_AFTER == 1.0 and conf.settings.EVENT_LOG is False
    assert conf.settings.REQUEUE_AFTER == DEFAULTS["REQUEUE_AFTER"]
    assert conf.settings.EVENT_LOG is True


def test_settings__deleted_means_the_default_even_after_a_first_read(settings):
    assert conf.settings.TICK_INTERVAL == 30.0
    del settings.DYRYGENT_TICK_INTERVAL  # pytest-django sends no setting_changed for this
    assert conf.settings.TICK_INTERVAL == DEFAULTS["TICK_INTERVAL"]


def test_settings__a_deleted_setting_comes_back_when_the_fixture_ends():
    """What the next test sees after ``del settings.X``: the project's value, not a stale default."""
    from pytest_django.fixtures import Settings as FixtureSettings

    wrapper = FixtureSettings(_is_pytest_django=True)
    del wrapper.DYRYGENT_TICK_INTERVAL
    assert conf.settings.TICK_INTERVAL == DEFAULTS["TICK_INTERVAL"]
    wrapper._finalize()
    assert conf.settings.TICK_INTERVAL == 30.0


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_settings__every_default_is_readable(name):
    assert getattr(conf.settings, name) is not None or DEFAULTS[name] is None


def annotation_of(setting):
    """The type a ``conf.Settings`` annotation must give ``setting``: a number is a float to mypy."""
    if set(setting.types) == set(conf.NUMBER):
        return "float"
    return " | ".join("None" if kind is type(None) else kind.__name__ for kind in setting.types)


def test_settings__every_setting_is_typed_as_it_is_checked():
    """``conf.Settings`` declares one annotation per setting, of the types its check accepts."""
    declared = conf.Settings.__annotations__
    assert sorted(declared) == sorted(conf.BY_NAME), "conf.Settings annotations and conf.SETTINGS differ"
    assert dict(declared) == {setting.name: annotation_of(setting) for setting in conf.SETTINGS}


def test_settings__unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="'TICK_INTERVALS'"):
        getattr(conf.settings, "TICK_INTERVALS")  # noqa: B009 - the attribute access is the test


def test_settings__only_prefixed_names_are_read(settings):
    settings.TICK_INTERVAL = 99  # no DYRYGENT_ prefix: not ours
    assert conf.settings.TICK_INTERVAL == 30.0


def test_get_celery_app__defaults_to_the_current_app_and_follows_the_setting(settings):
    assert conf.get_celery_app() is current_app._get_current_object() is tests_app
    settings.DYRYGENT_CELERY_APP = "tests.conftest.backend_app"
    from tests.conftest import backend_app

    assert conf.get_celery_app() is backend_app


@pytest.mark.django_db
def test_settings__the_engine_reads_them_at_run_time(settings, monkeypatch, django_capture_on_commit_callbacks):
    """Tick interval and processing-time limit set in a test are the ones the engine uses."""
    settings.DYRYGENT_TICK_INTERVAL = 7
    settings.DYRYGENT_MAX_PROCESSING_TIME = 60
    ticks = []
    monkeypatch.setattr(messaging, "send_tick", lambda pk, options=None, countdown=None: ticks.append(countdown))
    monkeypatch.setattr(messaging, "publish", lambda *args: None)
    wf = Workflow()
    wf.add_signature(noop.si())
    wf.apply_async()
    with django_capture_on_commit_callbacks(execute=True):
        engine.tick(wf.pk)
    wf.refresh_from_db()
    assert ticks == [7.0]
    assert wf.deadline - wf.started_at == timedelta(seconds=60)
    assert wf.next_tick_at - wf.started_at == timedelta(seconds=7)
