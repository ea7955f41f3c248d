"""A scheduled start that cannot happen is recorded where an operator looks, saying what to do.

The typical case: a definition added (or renamed) while the workers run; beat
asks for it, and the worker, which imported the catalogue when it started,
does not know it.
"""

import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_dyrygent import launch, tasks
from django_dyrygent.catalogue import UnknownDefinition
from django_dyrygent.models import FailedStart, QueuedRun, Workflow

TIMEOUT = 30
CHANGELIST = reverse("admin:django_dyrygent_workflow_changelist")


def superuser_client():
    client = Client()
    client.force_login(User.objects.create_superuser("root"))
    return client


@pytest.mark.worker
def test_start_definition__unknown_to_the_worker_is_recorded_with_what_to_do(worker, caplog):
    with caplog.at_level(logging.INFO):
        result = tasks.start_definition.delay("tests.added-later", {"x": 1})
        with pytest.raises(LookupError, match="restart the Celery workers") as exc:
            result.get(timeout=TIMEOUT)
    assert "No workflow definition named 'tests.added-later'" in str(exc.value)
    failed = FailedStart.objects.get()
    assert (failed.definition, failed.parameters, failed.trigger) == ("tests.added-later", {"x": 1}, "schedule")
    assert failed.error.startswith("No workflow definition named 'tests.added-later'. The worker ")
    assert "restart the Celery workers" in failed.error
    assert failed.hostname and f"The worker {failed.hostname} imports the catalogue" in failed.error
    # An expected failure: Celery logs it in one line, no traceback.
    traced = [r for r in caplog.records if r.name.startswith("celery") and r.exc_info]
    assert traced == []
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_start_definition__bad_parameters_are_recorded_too():
    with pytest.raises(launch.StartError, match="x: Enter a whole number.*Correct the schedule's parameters"):
        tasks.start_definition("tests.add", {"x": "two"})
    failed = FailedStart.objects.get()
    assert failed.definition == "tests.add" and "Enter a whole number" in failed.error


@pytest.mark.django_db
def test_start_next_queued__a_dropped_queued_run_is_recorded():
    QueuedRun.objects.create(definition="tests.add", parameters={"x": "no longer valid"})
    assert launch.start_next_queued("tests.add") is None
    failed = FailedStart.objects.get()
    assert failed.trigger == "queue" and "Enter a whole number" in failed.error
    assert not QueuedRun.objects.exists()


@pytest.mark.django_db
def test_workflow_list__warns_about_recent_failed_starts_with_a_link():
    client = superuser_client()
    assert "scheduled start failed" not in client.get(CHANGELIST).content.decode()
    with pytest.raises(UnknownDefinition):
        tasks.start_definition("tests.nope")
    page = client.get(CHANGELIST).content.decode()
    assert "1 scheduled start failed in the last 24 hours" in page
    assert reverse("admin:django_dyrygent_failedstart_changelist") in page
    FailedStart.objects.update(created_at=timezone.now() - timedelta(days=2))
    assert "scheduled start failed" not in client.get(CHANGELIST).content.decode()


@pytest.mark.django_db
def test_failed_start_admin__list_and_page_show_the_error_and_allow_clearing():
    with pytest.raises(UnknownDefinition):
        tasks.start_definition("tests.nope", {"x": 1})
    client = superuser_client()
    listing = client.get(reverse("admin:django_dyrygent_failedstart_changelist")).content.decode()
    assert "No workflow definition named &#x27;tests.nope&#x27;" in listing
    failed = FailedStart.objects.get()
    page = client.get(reverse("admin:django_dyrygent_failedstart_change", args=[failed.pk])).content.decode()
    assert "restart the Celery workers" in page and 'name="_save"' not in page
    client.post(reverse("admin:django_dyrygent_failedstart_delete", args=[failed.pk]), {"post": "yes"})
    assert not FailedStart.objects.exists()
