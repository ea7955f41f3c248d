"""A failed workflow says why (its first failure) and counts one failing task as one.

The workflow: ``group(fail, x) -> group(a, b) -> c``. Two groups in a row get
an internal join between them, so when ``fail`` raises, the join, ``a``, ``b``
and ``c`` end UPSTREAM_FAILED: one failure, three task nodes upstream-failed,
one join that no count may include.
"""

import json

import pytest
from celery import chain, group
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow
from django_dyrygent.states import NodeKind, NodeState
from tests.tasks import Boom, fail, record

pytestmark = pytest.mark.django_db

W = Workflow.State
TRACEBACK = 'Traceback (most recent call last):\n  File "tasks.py", line 50, in fail\n    raise Boom(message)\n'


def new_workflow():
    wf = Workflow(name="failing")
    wf.add_celery_canvas(chain(
        group(fail.si("kaboom"), record.si("x")), group(record.si("a"), record.si("b")), record.si("c"),
    ))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    return wf


def node(wf, label):
    return next(n for n in wf.nodes.all() if n.signature.get("args", [None])[0] == label)


def run_to_failure(wf):
    x, failing = node(wf, "x"), node(wf, "kaboom")
    outcomes.node_succeeded(wf.pk, x.task_id, "x")
    outcomes.node_failed(wf.pk, failing.task_id, exception=Boom("kaboom"),
                         traceback=TRACEBACK + "tests.tasks.Boom: kaboom\n")
    wf.refresh_from_db()
    assert wf.state == W.FAILURE
    return failing


def test_failed_workflow__error_names_the_first_failed_node_and_its_exception_line():
    wf = new_workflow()
    failing = run_to_failure(wf)
    assert wf.error == f"First failure: tests.fail [{failing.task_id}]: tests.tasks.Boom: kaboom"


def test_failed_workflow__first_failure_is_the_earliest_finished():
    wf = Workflow(name="two failures")
    wf.add_celery_canvas(group(fail.si("first"), fail.si("second"), record.si("ok")))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    second, first = node(wf, "second"), node(wf, "first")
    outcomes.node_failed(wf.pk, second.task_id, exception=Boom("second"))
    outcomes.node_failed(wf.pk, first.task_id, exception=Boom("first"))
    outcomes.node_succeeded(wf.pk, node(wf, "ok").task_id, None)
    wf.refresh_from_db()
    assert wf.state == W.FAILURE
    assert wf.error == f"First failure: tests.fail [{second.task_id}]: tests.tasks.Boom: second"


def test_failed_workflow__counts_the_failure_and_the_upstream_failed_task_nodes_apart():
    wf = new_workflow()
    run_to_failure(wf)
    states = [(n.kind, n.state) for n in wf.nodes.all()]
    assert (NodeKind.JOIN, NodeState.UPSTREAM_FAILED) in states  # the join is there, not counted
    assert (wf.nodes_failed, wf.nodes_upstream_failed) == (4, 3)


def test_retry__counts_the_task_nodes_it_reset_not_the_joins():
    wf = new_workflow()
    run_to_failure(wf)
    assert wf.retry() == 4  # fail, a, b, c (the join is reset too, uncounted)
    assert (wf.state, wf.error, wf.nodes_failed, wf.nodes_upstream_failed) == (W.RUNNING, "", 0, 0)


def test_retry__records_the_new_first_failure_when_it_fails_again():
    wf = new_workflow()
    run_to_failure(wf)
    wf.retry()
    again = node(wf, "kaboom")
    outcomes.node_failed(wf.pk, again.task_id, exception=Boom("again"))
    wf.refresh_from_db()
    assert wf.state == W.FAILURE
    assert wf.error == f"First failure: tests.fail [{again.task_id}]: tests.tasks.Boom: again"
    assert (wf.nodes_failed, wf.nodes_upstream_failed) == (4, 3)


def test_admin_list__shows_why_and_failed_apart_from_upstream_failed(admin_client):
    wf = new_workflow()
    failing = run_to_failure(wf)
    page = admin_client.get(reverse("admin:django_dyrygent_workflow_changelist")).content.decode()
    assert "5 / 5 done, 1 failed, 3 upstream failed" in page
    assert f"First failure: tests.fail [{failing.task_id}]: tests.tasks.Boom: kaboom" in page
    assert "4 failed" not in page


def test_admin_change_page__error_field_and_live_status_say_why(admin_client):
    wf = new_workflow()
    run_to_failure(wf)
    page = admin_client.get(reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])).content.decode()
    error_box = page.split("field-error", 1)[1].split('<div class="readonly">', 1)[1].split("</div>", 1)[0]
    assert "First failure: tests.fail" in error_box and "Boom: kaboom" in error_box
    status = admin_client.get(reverse("admin:django_dyrygent_workflow_status", args=[wf.pk])).json()
    assert "First failure: tests.fail" in status["fields"]["error"]
    assert status["nodes_upstream_failed"] == 3


def test_admin_retry_action__message_counts_task_nodes():
    wf = new_workflow()
    run_to_failure(wf)
    user = User.objects.create_superuser("root")
    client = Client()
    client.force_login(user)
    response = client.post(reverse("admin:django_dyrygent_workflow_changelist"), {
        "action": "retry_workflows", "_selected_action": [str(wf.pk)],
    }, follow=True)
    assert "1 workflow retried (4 nodes reset)." in response.content.decode()


def test_api_status__error_and_counts():
    wf = new_workflow()
    failing = run_to_failure(wf)
    user = User.objects.create_user("reader")
    user.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client = Client()
    client.force_login(user)
    data = client.get(f"/dyrygent/workflows/{wf.pk}/").json()
    assert data["error"] == f"First failure: tests.fail [{failing.task_id}]: tests.tasks.Boom: kaboom"
    assert (data["nodes_failed"], data["nodes_upstream_failed"]) == (4, 3)
    json.dumps(data)


def test_on_finish__payload_is_the_first_failure(compat_handler, django_capture_on_commit_callbacks):
    payloads = []
    compat_handler("on_finish", lambda workflow, payload: payloads.append(payload))
    wf = new_workflow()
    with django_capture_on_commit_callbacks(execute=True):  # only what the failure announces
        failing = run_to_failure(wf)
    assert payloads == [f"First failure: tests.fail [{failing.task_id}]: tests.tasks.Boom: kaboom"]


def test_on_finish__payload_stays_none_on_success(compat_handler, django_capture_on_commit_callbacks):
    payloads = []
    compat_handler("on_finish", lambda workflow, payload: payloads.append(payload))
    wf = Workflow(name="fine")
    wf.add_signature(record.si("only"))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    with django_capture_on_commit_callbacks(execute=True):
        outcomes.node_succeeded(wf.pk, wf.nodes.get().task_id, None)
    wf.refresh_from_db()
    assert wf.state == W.SUCCESS
    assert payloads == [None]
