"""Helpers of the unit tests: workflows to look at, the admin's URLs, engine calls with their commit."""

import pytest
from celery import chain, group
from django.urls import reverse

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow
from tests.tasks import add, record

CHANGELIST = "/admin/django_dyrygent/workflow/"
NODE_CHANGELIST = "/admin/django_dyrygent/workflownode/"


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """Call an engine entry point and run what it queued for after commit."""

    def call(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)

    return call


def make_workflow(name="wf", width=2, **kwargs):
    wf = Workflow(name=name, **kwargs)
    wf.add_celery_canvas(chain(record.si("a"), group(record.si(f"b{i}") for i in range(width)), add.si(1, 2)))
    wf.apply_async()
    return wf


def change_url(wf):
    return reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])


def status_url(wf):
    return reverse("admin:django_dyrygent_workflow_status", args=[wf.pk])


def failed_workflow():
    """A workflow whose first node failed, driven through the engine (no worker needed)."""
    wf = make_workflow("failing")
    engine.tick(wf.pk, scheduled=False)
    first = wf.nodes.get(position=0)
    outcomes.node_failed(wf.pk, first.task_id, exception=ValueError("boom"), traceback="Traceback: boom")
    wf.refresh_from_db()
    assert wf.state == Workflow.State.FAILURE
    return wf
