"""The example project's two definitions, started through all four doors on the suite's real worker."""

import json

import pytest
from django.core.management import call_command
from django.urls import reverse

from django_dyrygent import catalogue, tasks
from django_dyrygent.models import Workflow
from example_project.demo import workflows as demo_workflows  # noqa: F401  (registers; worker knows the tasks)
from example_project.schedule import BEAT_SCHEDULE

pytestmark = pytest.mark.worker
TIMEOUT = 60


def test_example__declares_two_definitions():
    demo, audit = catalogue.registry.get("demo"), catalogue.registry.get("nightly-audit")
    assert demo.title.startswith("Provision hosts") and audit.overlap == "skip"
    assert [f["name"] for f in demo.fields_schema()] == ["hosts", "delay", "fail"]
    entry = BEAT_SCHEDULE["nightly-audit"]
    assert entry["task"] == tasks.start_definition.name and entry["kwargs"]["name"] == "nightly-audit"


def test_example__admin_command_api_and_schedule_each_start_a_run(worker, demo_app, admin_client):  # noqa: F811
    # Admin: the start form redirects to the live DAG page.
    response = admin_client.post(reverse("admin:django_dyrygent_workflow_start", args=["demo"]),
                                 {"hosts": "2", "delay": "0"})
    by_admin = Workflow.objects.get(trigger="admin")
    assert response["Location"] == reverse("admin:django_dyrygent_workflow_change", args=[by_admin.pk])
    assert by_admin.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS and by_admin.nodes_total == 8

    # Command line.
    call_command("dyrygent_run", "nightly-audit", "--param", "delay=0", stdout=open("/dev/null", "w"))
    by_command = Workflow.objects.get(trigger="command")
    assert by_command.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS

    # JSON API, mounted at /api/ by the example's urls.py.
    response = admin_client.post("/api/definitions/nightly-audit/start/", content_type="application/json",
                                 data=json.dumps({"params": {"channel": "dev", "delay": 0}}))
    assert response.status_code == 201, response.content
    by_api = Workflow.objects.get(pk=response.json()["id"])
    assert by_api.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert by_api.nodes.get(task_name="demo.notify").result == "notified #dev"

    # Schedule: the beat entry's task and kwargs, run by the worker.
    answer = tasks.start_definition.apply_async(kwargs=BEAT_SCHEDULE["nightly-audit"]["kwargs"]).get(TIMEOUT)
    by_beat = Workflow.objects.get(pk=answer["workflow"])
    assert by_beat.trigger == "schedule" and by_beat.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert Workflow.objects.count() == 4
