"""The example project's demo: its DAG, its command and its pages, on the suite's real worker."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowNode

# Imported at collection time, before the session worker starts, so the worker
# knows the demo tasks (shared tasks bind to the suite's Celery app).
from example_project.demo import tasks as demo_tasks  # noqa: F401
from example_project.demo.management.commands.run_demo import Command as RunDemo
from example_project.demo.workflows import build_demo_workflow

TASK = WorkflowNode.Kind.TASK
JOIN = WorkflowNode.Kind.JOIN


def run_demo(*args):
    out = StringIO()
    call_command(RunDemo(), "--delay", "0", "--interval", "0.05", "--timeout", "60", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_build_demo_workflow__mixes_canvas_and_explicit_dependencies():
    hosts = 3
    wf = build_demo_workflow(hosts=hosts).apply_async()

    names = list(wf.nodes.filter(kind=TASK).values_list("task_name", flat=True))
    assert sorted(names) == sorted(
        ["demo.fetch_inventory", "demo.summarize", "demo.audit", "demo.notify"]
        + ["demo.provision"] * hosts + ["demo.check"] * hosts
    )
    assert wf.nodes_total == 2 * hosts + 4

    def deps(task_name):
        return sorted(
            d.task_name or d.kind
            for node in wf.nodes.filter(task_name=task_name) for d in node.dependencies.all()
        )

    # Explicit nodes hang off the canvas: audit beside it, notify after all leaves.
    assert deps("demo.audit") == ["demo.fetch_inventory"]
    assert deps("demo.notify") == ["demo.audit", "demo.summarize"]
    assert deps("demo.provision") == ["demo.fetch_inventory"] * hosts
    # group -> chord header and header -> body go through joins: edges grow linearly.
    assert wf.nodes.filter(kind=JOIN).count() == 2
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 4 * hosts + 4


@pytest.mark.parametrize(
    "kwargs, message",
    [({"hosts": 0}, "hosts must be an integer from 1 to 100"), ({"delay": -1}, "delay must be from 0")],
)
def test_build_demo_workflow__rejects_bad_input_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_demo_workflow(**kwargs)


def test_run_demo__bad_input_is_a_command_error():
    with pytest.raises(CommandError, match="hosts must be an integer"):
        run_demo("--hosts", "0")


@pytest.mark.worker
def test_run_demo__runs_to_success_and_reports_progress(worker, demo_app, admin_client):
    output = run_demo("--hosts", "2")

    wf = Workflow.objects.get()
    assert wf.state == Workflow.State.SUCCESS
    assert wf.nodes_done == wf.nodes_total == 8
    assert f"Workflow {wf.pk} ended SUCCESS as expected" in output
    assert " 8/8 done" in output
    assert reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]) in output
    # The chord body got the list of the header's results (pass-results mode).
    checks = wf.nodes.filter(task_name="demo.check").values_list("result", flat=True)
    assert wf.nodes.get(task_name="demo.summarize").result == {
        "hosts": 2, "max_latency_ms": max(c["latency_ms"] for c in checks),
    }

    page = admin_client.get(reverse("demo:progress", args=[wf.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "http-equiv=\"refresh\"" not in html  # final: the page stops reloading
    assert "8 of 8 nodes done" in html and "max_latency_ms" in html
    assert '<rect class="dy-part-ok" x="0" y="0" width="100" height="10"/>' in html  # all green, no red


@pytest.mark.worker
def test_run_demo__failure_switch_ends_failure_with_independent_branch_done(worker):
    output = run_demo("--hosts", "2", "--fail")

    wf = Workflow.objects.get()
    assert wf.state == Workflow.State.FAILURE
    assert "ended FAILURE as expected" in output
    states = dict(wf.nodes.filter(kind=TASK).values_list("task_name", "state").order_by("position"))
    assert states["demo.audit"] == WorkflowNode.State.SUCCESS
    assert states["demo.notify"] == WorkflowNode.State.UPSTREAM_FAILED
    failed = wf.nodes.get(state=WorkflowNode.State.FAILURE)
    assert failed.task_name == "demo.provision" and "demo failure on request" in failed.error


@pytest.mark.django_db
def test_demo_index__starts_a_workflow_and_redirects_to_its_progress(demo_app, client):
    response = client.post(reverse("demo:index"), {"hosts": "2", "delay": "0", "fail": ""})

    wf = Workflow.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("demo:progress", args=[wf.pk])
    assert wf.nodes_total == 8 and wf.custom_payload["source"] == "demo"
    # Not final yet (this test's transaction never commits, so no tick runs):
    # the page reloads itself and lists every task node.
    html = client.get(response["Location"]).content.decode()
    assert "http-equiv=\"refresh\"" in html
    assert html.count("demo.provision") == 2 and "demo.notify" in html
    assert str(wf.pk)[:8] in client.get(reverse("demo:index")).content.decode()


@pytest.mark.django_db
def test_demo_index__invalid_form_names_the_field(demo_app, client):
    response = client.post(reverse("demo:index"), {"hosts": "0", "delay": "0"})

    assert response.status_code == 200
    assert not Workflow.objects.exists()
    assert "Ensure this value is greater than or equal to 1" in response.content.decode()


def stalled_demo_workflow():
    """A demo workflow created a while ago that no worker has touched (never ticked)."""
    from datetime import timedelta

    from django.utils import timezone

    wf = build_demo_workflow(hosts=1)
    wf.save()
    Workflow.objects.filter(pk=wf.pk).update(created_at=timezone.now() - timedelta(seconds=30))
    return wf


@pytest.mark.django_db
def test_demo_progress__hints_when_no_worker_answers_a_ping(demo_app, client, monkeypatch):
    from celery import current_app
    from celery.app.control import Control

    # A real ping on the real broker, sent to a control exchange no worker listens on.
    app = current_app._get_current_object()
    monkeypatch.setitem(app.conf, "control_exchange", "dyrygent-tests-nobody")
    monkeypatch.setattr(app, "control", Control(app))
    wf = stalled_demo_workflow()
    html = client.get(reverse("demo:progress", args=[wf.pk])).content.decode()
    assert 'id="no-worker"' in html and "celery -A example_project worker" in html


@pytest.mark.worker
def test_demo_progress__no_hint_when_a_worker_answers(worker, demo_app, client):
    from example_project.demo.views import workers_answering

    assert workers_answering(timeout=2) >= 1  # the suite's worker answers the page's ping
    wf = stalled_demo_workflow()
    html = client.get(reverse("demo:progress", args=[wf.pk])).content.decode()
    assert 'id="no-worker"' not in html
    assert "reloads every" in html


@pytest.mark.worker
def test_run_demo__command_line_timing_agrees_and_no_security_warning(tmp_path):
    """`make demo`'s command as a user runs it: its own worker process, its own SQLite file."""
    import os
    import re
    import subprocess
    import sys

    from example_project.demo.management.commands.run_demo import PROJECT_ROOT

    env = dict(os.environ, DYRYGENT_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="example_project.settings",
               PYTHONWARNINGS="default")
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=PROJECT_ROOT, env=env, check=True,
                   timeout=120)
    done = subprocess.run([*manage, "run_demo", "--worker", "--hosts", "2", "--delay", "0"], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "SecurityWarning" not in output and "superuser privileges" not in output
    stamps = re.findall(r"\[\s*([\d.]+)s\] (\S+)", done.stdout)
    last_progress = [s for s, word in stamps if word == "SUCCESS"][-1]
    final = re.search(r"\[\s*([\d.]+)s\] Workflow \S+ ended SUCCESS as expected \(([\d.]+)s from its first tick",
                      done.stdout)
    assert final, done.stdout
    assert final.group(1) == last_progress
    assert float(final.group(2)) <= float(final.group(1))
