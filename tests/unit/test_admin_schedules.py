"""The admin's scheduled workflows: beat entries from settings and django-celery-beat, next run, last outcome."""

import json
from datetime import timedelta

import pytest
from celery.schedules import crontab
from django.urls import reverse
from django.utils import timezone

from django_dyrygent.admin import schedules
from django_dyrygent.conf import get_celery_app
from django_dyrygent.models import FailedStart, Workflow

pytestmark = pytest.mark.django_db
URL = "/admin/django_dyrygent/workflow/schedules/"


@pytest.fixture
def beat_schedule(monkeypatch):
    # The app the page reads (the current one): another test module may have made its own current.
    monkeypatch.setitem(get_celery_app().conf, "beat_schedule", {
        "nightly": {"task": "django_dyrygent.start_definition", "schedule": crontab(minute=0, hour=3),
                    "kwargs": {"name": "tests.add", "params": {"x": 1, "y": 2}}},
        "often": {"task": "django_dyrygent.start_definition", "schedule": 30.0, "args": ["tests.hold-skip"]},
        "sweep": {"task": "django_dyrygent.sweep", "schedule": 60.0},
    })


def test_entries__settings_and_django_celery_beat_with_next_run_and_last_outcome(beat_schedule):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
    last = timezone.now() - timedelta(minutes=4)
    PeriodicTask.objects.create(name="db-run", task="django_dyrygent.start_definition", interval=every,
                                kwargs=json.dumps({"name": "tests.hold-queue"}), last_run_at=last)
    PeriodicTask.objects.create(name="other", task="tests.add", interval=every)
    ran = Workflow.objects.create(name="add", definition="tests.add", trigger="schedule", state="SUCCESS")
    FailedStart.objects.create(definition="tests.hold-skip", trigger="schedule", error="No workflow definition ...")
    found = {e.name: e for e in schedules.entries()}
    assert set(found) == {"nightly", "often", "db-run"}
    nightly, often, db_run = found["nightly"], found["often"], found["db-run"]
    assert (nightly.definition, nightly.parameters, nightly.source) == ("tests.add", {"x": 1, "y": 2}, "settings")
    # The next 03:00 (Celery's timezone): on the hour, within a day.
    assert nightly.next_run.minute == 0 and timedelta(0) < nightly.next_run - timezone.now() <= timedelta(days=1)
    assert (nightly.last_state, nightly.last_workflow) == ("SUCCESS", ran)
    assert (often.definition, often.last_state) == ("tests.hold-skip", "FAILED_START")
    assert db_run.source == "django-celery-beat" and db_run.last_run == last
    assert abs((db_run.next_run - (last + timedelta(minutes=10))).total_seconds()) < 1
    assert db_run.last_state == ""


def test_schedules_page__lists_them_and_needs_the_view_permission(admin_client, client, beat_schedule):
    from django.contrib.auth.models import User

    content = admin_client.get(URL).content.decode()
    assert 'id="dy-schedules"' in content and "nightly" in content and "tests.hold-skip" in content
    assert "django_dyrygent.sweep" not in content.split('id="dy-schedules"')[1]
    assert reverse("admin:django_dyrygent_workflow_schedules") == URL
    client.force_login(User.objects.create_user("staff", is_staff=True))
    assert client.get(URL).status_code == 403


def test_schedules_page__says_how_to_add_one_when_there_is_none(admin_client, monkeypatch):
    monkeypatch.setitem(get_celery_app().conf, "beat_schedule", {})
    assert "No schedule starts a workflow definition." in admin_client.get(URL).content.decode()
