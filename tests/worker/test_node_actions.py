"""Operator actions on one node: retry it and what failed after it, mark it succeeded or skipped, cancel it.

Each goes through the engine (one locked step, the state table, the event
log) and each has its own permission in the admin.
"""

import pytest
from celery import chain, group
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from django_dyrygent import engine
from django_dyrygent.engine import hotpath, outcomes
from django_dyrygent.engine import nodes as node_actions
from django_dyrygent.models import Workflow, WorkflowEvent
from tests.tasks import Boom, fail, record

W = Workflow.State
TIMEOUT = 60


def states(wf):
    return {n.signature["args"][0]: n.state for n in wf.nodes.filter(kind="task")}


def node(wf, label):
    return next(n for n in wf.nodes.filter(kind="task") if n.signature["args"][0] == label)


def two_branches():
    """``f1 -> a1`` and ``f2 -> a2``, both failing: FAILURE, two failures, two upstream-failed nodes."""
    wf = Workflow(name="two branches")
    wf.add_celery_canvas(group(chain(fail.si("f1"), record.si("a1")), chain(fail.si("f2"), record.si("a2"))))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    for label in ("f1", "f2"):
        outcomes.node_failed(wf.pk, node(wf, label).task_id, exception=Boom(label))
    wf.refresh_from_db()
    assert wf.state == W.FAILURE and states(wf) == {
        "f1": "FAILURE", "a1": "UPSTREAM_FAILED", "f2": "FAILURE", "a2": "UPSTREAM_FAILED",
    }
    return wf


def first_then():
    """``first -> then``, started: ``first`` QUEUED, ``then`` PENDING."""
    wf = Workflow(name="first then")
    wf.add_celery_canvas(chain(record.si("first"), record.si("then")))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    return wf


def counters(wf):
    wf.refresh_from_db()
    return (wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed, wf.nodes_upstream_failed, wf.nodes_skipped)


# -- the engine --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_node__reruns_it_and_what_failed_after_it_only():
    wf = two_branches()
    old = node(wf, "f1").task_id
    assert node_actions.retry_node(wf.pk, node(wf, "f1").pk, reason="retried by test") == 2
    wf.refresh_from_db()
    assert wf.state == W.RUNNING and wf.error == ""
    assert states(wf) == {"f1": "QUEUED", "a1": "PENDING", "f2": "FAILURE", "a2": "UPSTREAM_FAILED"}
    f1 = node(wf, "f1")
    assert f1.task_id != old and f1.previous_task_ids == [old] and f1.attempts == 2
    assert node(wf, "a1").waiting == 1
    assert counters(wf) == (2, 0, 2, 1, 0)
    assert WorkflowEvent.objects.filter(node=f1, new_state="PENDING", reason="retried by test").exists()


@pytest.mark.django_db
def test_retry_node__a_node_that_did_not_fail_is_refused_and_nothing_changes():
    wf = two_branches()
    outcomes_before = states(wf)
    wf2 = Workflow(name="ok")
    wf2.add_signature(record.si("ok"))
    wf2.apply_async()
    engine.tick(wf2.pk, scheduled=False)
    outcomes.node_succeeded(wf2.pk, node(wf2, "ok").task_id, None)
    with pytest.raises(ValidationError, match="is SUCCESS; only a FAILURE, UPSTREAM_FAILED or CANCELED node"):
        node_actions.retry_node(wf2.pk, node(wf2, "ok").pk)
    with pytest.raises(ValidationError, match="is not a node of workflow"):
        node_actions.retry_node(wf.pk, node(wf2, "ok").pk)
    assert states(wf) == outcomes_before


@pytest.mark.django_db
def test_mark_node__succeeded_with_a_result_lets_what_it_held_back_run():
    wf = two_branches()
    held_back = node_actions.mark_node(wf.pk, node(wf, "f1").pk, "SUCCESS", result={"rows": 3},
                                       reason="marked success by test")
    assert held_back == 1
    wf.refresh_from_db()
    assert wf.state == W.RUNNING
    assert states(wf) == {"f1": "SUCCESS", "a1": "QUEUED", "f2": "FAILURE", "a2": "UPSTREAM_FAILED"}
    assert node(wf, "f1").result == {"rows": 3} and node(wf, "f1").error == ""
    assert counters(wf) == (3, 1, 2, 1, 0)
    outcomes.node_succeeded(wf.pk, node(wf, "a1").task_id, None)
    wf.refresh_from_db()
    assert wf.state == W.FAILURE  # the other branch still failed
    assert wf.error.startswith(f"First failure: tests.fail [{node(wf, 'f2').task_id}]")


@pytest.mark.django_db
def test_mark_node__skipped_on_a_queued_node_revokes_it_and_releases_its_dependents(
    monkeypatch, django_capture_on_commit_callbacks,
):
    sent = {"revoked": [], "published": []}
    monkeypatch.setattr("django_dyrygent.engine.messaging.revoke", lambda ids, **kw: sent["revoked"].extend(ids))
    monkeypatch.setattr("django_dyrygent.engine.messaging.publish",
                        lambda wf_id, app, entries: sent["published"].extend(n.task_id for n, _a in entries))
    monkeypatch.setattr("django_dyrygent.engine.messaging.send_tick", lambda *args, **kwargs: True)
    wf = first_then()
    first = node(wf, "first")
    with django_capture_on_commit_callbacks(execute=True):
        node_actions.mark_node(wf.pk, first.pk, "SKIPPED")
    assert states(wf) == {"first": "SKIPPED", "then": "QUEUED"}
    assert sent == {"revoked": [first.task_id], "published": [node(wf, "then").task_id]}
    assert counters(wf) == (1, 0, 0, 0, 1)


@pytest.mark.django_db
def test_mark_node__a_running_or_waiting_node_is_refused():
    wf = first_then()
    hotpath.node_started(wf.pk, node(wf, "first").task_id)
    with pytest.raises(ValidationError, match="is STARTED; a node can be marked while"):
        node_actions.mark_node(wf.pk, node(wf, "first").pk, "SUCCESS")
    with pytest.raises(ValidationError, match="still waits for"):
        node_actions.mark_node(wf.pk, node(wf, "then").pk, "SKIPPED")
    with pytest.raises(ValueError, match="SUCCESS or SKIPPED, not 'FAILURE'"):
        node_actions.mark_node(wf.pk, node(wf, "then").pk, "FAILURE")


@pytest.mark.django_db
def test_cancel_node__its_dependents_follow_their_rules_and_the_workflow_ends():
    wf = first_then()
    assert node_actions.cancel_node(wf.pk, node(wf, "first").pk, reason="canceled by test") is True
    wf.refresh_from_db()
    assert states(wf) == {"first": "CANCELED", "then": "UPSTREAM_FAILED"}
    assert wf.state == W.FAILURE and "canceled (canceled by test)" in wf.error
    assert counters(wf) == (2, 0, 2, 1, 0)
    assert node_actions.cancel_node(wf.pk, node(wf, "first").pk) is False  # already ended


# -- the admin: permissions, buttons, list actions ----------------------------------------------------------


def staff(*codenames, username="alice"):
    user = User.objects.create_user(username, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=("view_workflownode", *codenames)))
    client = Client()
    client.force_login(user)
    return client


def node_page(client, n):
    return client.get(reverse("admin:django_dyrygent_workflownode_change", args=[n.pk])).content.decode()


def act_url(n, action):
    return reverse("admin:django_dyrygent_workflownode_act", args=[n.pk, action])


@pytest.mark.django_db
def test_node_page__shows_the_buttons_the_user_may_use_on_this_state():
    wf = two_branches()
    f1 = node(wf, "f1")
    assert 'id="dy-node-actions"' not in node_page(staff(), f1)
    page = node_page(staff("retry_node", username="bob"), f1)
    assert act_url(f1, "retry") in page and act_url(f1, "mark_succeeded") not in page
    page = node_page(staff("mark_node", "cancel_node", username="carol"), f1)
    assert act_url(f1, "mark_succeeded") in page and act_url(f1, "mark_skipped") in page
    assert act_url(f1, "cancel") not in page  # a failed node has nothing left to cancel


@pytest.mark.django_db
def test_node_page__each_action_needs_its_own_permission():
    wf = two_branches()
    f1 = node(wf, "f1")
    client = staff("mark_node")
    assert client.post(act_url(f1, "retry")).status_code == 403
    assert client.post(act_url(f1, "cancel")).status_code == 403
    assert node(wf, "f1").state == "FAILURE"
    assert client.get(act_url(f1, "mark_skipped")).status_code == 405


@pytest.mark.django_db
def test_node_page__mark_succeeded_with_a_json_result_is_logged_with_who(monkeypatch):
    wf = two_branches()
    f1 = node(wf, "f1")
    client = staff("mark_node")
    response = client.post(act_url(f1, "mark_succeeded"), {"result": '{"rows": 3}'}, follow=True)
    assert "Node marked SUCCESS." in response.content.decode()
    f1.refresh_from_db()
    assert (f1.state, f1.result) == ("SUCCESS", {"rows": 3})
    assert WorkflowEvent.objects.filter(node=f1, new_state="SUCCESS", reason="marked success by alice in the admin")
    bad = client.post(act_url(node(wf, "f2"), "mark_succeeded"), {"result": "{oops"}, follow=True)
    assert "The result is not valid JSON" in bad.content.decode()
    assert node(wf, "f2").state == "FAILURE"


@pytest.mark.django_db
def test_node_list__actions_are_filtered_by_permission_and_report_refusals():
    wf = two_branches()
    changelist = reverse("admin:django_dyrygent_workflownode_changelist")
    client = staff("retry_node")
    page = client.get(changelist).content.decode()
    assert 'value="retry_nodes"' in page and 'value="cancel_nodes"' not in page
    selected = [str(node(wf, "f1").pk), str(node(wf, "a2").pk)]
    response = client.post(changelist, {"action": "retry_nodes", "_selected_action": selected}, follow=True)
    text = response.content.decode()
    assert "1 node retried (2 nodes reset)." in text
    assert f"did not run because {node(wf, 'f2').task_id} is FAILURE; retry that node." in text
    assert states(wf) == {"f1": "QUEUED", "a1": "PENDING", "f2": "FAILURE", "a2": "UPSTREAM_FAILED"}


@pytest.mark.django_db
def test_node_list__mark_skipped_action():
    wf = two_branches()
    changelist = reverse("admin:django_dyrygent_workflownode_changelist")
    client = staff("mark_node")
    response = client.post(changelist, {"action": "mark_nodes_skipped",
                                        "_selected_action": [str(node(wf, "f1").pk), str(node(wf, "f2").pk)]},
                           follow=True)
    assert "2 nodes marked SKIPPED (2 nodes after them may run again)." in response.content.decode()
    assert states(wf) == {"f1": "SKIPPED", "a1": "QUEUED", "f2": "SKIPPED", "a2": "QUEUED"}


# -- on a real worker ---------------------------------------------------------------------------------------


@pytest.mark.worker
def test_mark_node__a_failed_workflow_runs_on_to_success_on_a_worker(worker):
    wf = Workflow(name="mark and go on", pass_results=True)
    wf.add_celery_canvas(chain(fail.si("down"), record.s("after")))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.FAILURE
    failed = node(wf, "down")
    node_actions.mark_node(wf.pk, failed.pk, "SUCCESS", result="by hand", reason="marked success by test")
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    after = node(wf, "after")
    assert after.state == "SUCCESS" and after.attempts == 2
    wf.refresh_from_db()
    assert (wf.nodes_failed, wf.nodes_upstream_failed, wf.nodes_succeeded, wf.error) == (0, 0, 2, "")


@pytest.mark.django_db
def test_mark_node__counts_only_what_no_other_failure_still_holds_back():
    """``f1 -> join <- f2 -> ...``: marking f1 lets nothing go while f2 still failed."""
    wf = Workflow(name="two failures, one follower")
    first, second = wf.add_signature(fail.si("f1")), wf.add_signature(fail.si("f2"))
    wf.add_signature(record.si("after"), dependencies=[first, second])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    for label in ("f1", "f2"):
        outcomes.node_failed(wf.pk, node(wf, label).task_id, exception=Boom(label))
    assert node_actions.mark_node(wf.pk, node(wf, "f1").pk, "SKIPPED") == 0
    assert states(wf) == {"f1": "SKIPPED", "f2": "FAILURE", "after": "UPSTREAM_FAILED"}
    assert node_actions.mark_node(wf.pk, node(wf, "f2").pk, "SKIPPED") == 1
    assert states(wf)["after"] == "QUEUED"
    assert counters(wf) == (2, 0, 0, 0, 2)
