"""Waits for outside events: a node with no task, WAITING once reached, succeeded by wf.signal(name)
or node.complete(); a duplicate or early signal, or one for an ended workflow, completes nothing.
"""

import json
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connections
from django.test import Client
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow, WorkflowEvent, WorkflowNode
from django_dyrygent.worker.recovery import Sweeper
from tests.conftest import wait_for
from tests.models import Execution
from tests.tasks import identity, record

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State


def approval(timeout=None, pass_results=False, **wait_options):
    """before -> wait "approved" -> after, started in this process (nothing published: no worker)."""
    wf = Workflow(name="approval", pass_results=pass_results)
    before = wf.add_signature(record.si("before"))
    wait = wf.add_wait("approved", dependencies=[before], timeout=timeout, **wait_options)
    wf.add_signature(identity.s() if pass_results else record.si("after"), dependencies=[wait])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    wf.refresh_from_db()
    return wf


def reach_wait(wf):
    before = wf.nodes.get(task_name="tests.record", position=0)
    outcomes.node_succeeded(wf.pk, before.task_id, "B")
    wait = wf.nodes.get(kind="wait")
    assert wait.state == S.WAITING
    return wait


def after(wf):
    return wf.nodes.exclude(kind__in=["wait", "join"]).order_by("position").last()


# -- building --------------------------------------------------------------------------------------


def test_add_wait__refuses_a_bad_name_or_default():
    wf = Workflow()
    with pytest.raises(ValidationError, match="name of 1 to 255"):
        wf.add_wait("")
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        wf.add_wait("approved", default={1, 2})
    with pytest.raises(ValidationError, match="timeout must be"):
        wf.add_wait("approved", timeout=-1)


@pytest.mark.django_db
def test_add_wait__is_counted_a_leaf_and_needs_no_registered_task(settings):
    settings.DYRYGENT_UNKNOWN_TASKS = "refuse"
    wf = Workflow()
    first = wf.add_signature(record.si("a"))
    wait = wf.add_wait("orders.approved", dependencies=[first])
    assert wf.leaves() == [wait]
    wf.apply_async()
    wf.refresh_from_db()
    assert wf.nodes_total == 2
    assert wf.nodes.get(kind="wait").task_name == "orders.approved"


# -- the engine without a worker -----------------------------------------------------------------


@pytest.mark.django_db
def test_signal__completes_the_wait_and_releases_its_dependent_then_second_returns_zero():
    wf = approval()
    wait = reach_wait(wf)
    assert wait.publish_count == 0 and wait.queued_at is None
    assert wf.signal("approved", {"by": "alice"}) == 1
    wait.refresh_from_db()
    assert (wait.state, wait.result, wait.reason) == (S.SUCCESS, {"by": "alice"}, "signal 'approved'")
    assert after(wf).state == S.QUEUED
    assert wf.signal("approved", {"by": "bob"}) == 0
    wait.refresh_from_db()
    assert wait.result == {"by": "alice"}
    assert wf.nodes_done == 2


@pytest.mark.django_db
def test_signal__before_the_wait_is_reached_returns_zero_and_is_not_kept():
    wf = approval()
    assert wf.signal("approved", "early") == 0
    assert wf.signal("nobody-waits-for-this") == 0
    wait = reach_wait(wf)
    wait.refresh_from_db()
    assert (wait.state, wait.result) == (S.WAITING, None)


@pytest.mark.django_db
def test_signal__for_a_canceled_or_finished_workflow_returns_zero():
    wf = approval()
    reach_wait(wf)
    assert wf.cancel()
    assert wf.signal("approved") == 0
    assert wf.nodes.get(kind="wait").state == S.CANCELED

    done = approval()
    reach_wait(done)
    assert done.signal("approved") == 1
    outcomes.node_succeeded(done.pk, after(done).task_id, None)
    done.refresh_from_db()
    assert done.state == W.SUCCESS
    assert done.signal("approved") == 0


@pytest.mark.django_db
def test_signal__waiting_node_survives_tick_and_sweep():
    wf = approval(timeout=3600)
    reach_wait(wf)
    Workflow.objects.filter(pk=wf.pk).update(next_tick_at=timezone.now() - timedelta(hours=1))
    assert engine.tick(wf.pk, scheduled=True) == W.RUNNING
    assert engine.tick(wf.pk, scheduled=False) == W.RUNNING
    Workflow.objects.filter(pk=wf.pk).update(next_tick_at=timezone.now() - timedelta(hours=1))
    assert engine.sweep(stale_after=0) == 1
    wait = wf.nodes.get(kind="wait")
    assert wait.state == S.WAITING and wait.timeout_at > timezone.now()
    assert wait.reason.startswith("waiting for signal 'approved' until 20")
    assert after(wf).state == S.PENDING
    assert wf.signal("approved") == 1


@pytest.mark.worker
def test_signal__a_wait_without_timeout_survives_the_workers_sweep_then_a_signal_completes_it(worker, settings):
    settings.DYRYGENT_LIVENESS = True  # the sweep judges nodes whose worker or message seems lost
    wf = Workflow(name="approval-sweep")
    before = wf.add_signature(record.si("before"))
    wait = wf.add_wait("approved", dependencies=[before])
    wf.add_signature(record.si("after"), dependencies=[wait])
    wf.apply_async()
    wait_for(lambda: WorkflowNode.objects.get(pk=wait.pk).state == S.WAITING, "the wait to be reached")
    # As if it had waited a day with its tick message lost: every repair of the sweep looks at it.
    day_ago = timezone.now() - timedelta(days=1)
    WorkflowNode.objects.filter(pk=wait.pk).update(started_at=day_ago, queued_at=day_ago)
    for _ in range(2):
        Workflow.objects.filter(pk=wf.pk).update(next_tick_at=day_ago)
        Sweeper().sweep_once(stale_after=0)
    swept = WorkflowNode.objects.get(pk=wait.pk)
    assert (swept.state, swept.timeout_at, swept.publish_count) == (S.WAITING, None, 0)
    assert swept.reason == "waiting for signal 'approved'"
    assert list(WorkflowEvent.objects.filter(node_id=wait.pk).values_list("new_state", flat=True)) == [S.WAITING]
    assert not Execution.objects.filter(label="after").exists()
    assert wf.signal("approved") == 1
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    assert Execution.objects.filter(label="after").count() == 1


@pytest.mark.django_db
def test_wait__timeout_fails_it_at_the_tick_when_due():
    wf = approval(timeout=60)
    wait = reach_wait(wf)
    assert wait.timeout_at is not None
    WorkflowNode.objects.filter(pk=wait.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))
    assert engine.tick(wf.pk, scheduled=True) == W.FAILURE
    wait.refresh_from_db()
    assert wait.state == S.FAILURE and "no signal 'approved' 60s" in wait.error
    assert after(wf).state == S.UPSTREAM_FAILED
    assert wf.signal("approved") == 0


@pytest.mark.django_db
def test_wait__timeout_with_a_default_succeeds_with_it_when_the_sweep_finds_it():
    wf = approval(timeout=60, default={"approved": False})
    wait = reach_wait(wf)
    WorkflowNode.objects.filter(pk=wait.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))
    # The workflow's tick message was lost: the sweep ticks it.
    Workflow.objects.filter(pk=wf.pk).update(next_tick_at=timezone.now() - timedelta(hours=1))
    engine.sweep(stale_after=0)
    wait.refresh_from_db()
    assert (wait.state, wait.result, wait.reason) == (S.SUCCESS, {"approved": False}, "timed out: default taken")
    assert after(wf).state == S.QUEUED


@pytest.mark.django_db
def test_wait__retry_after_timeout_waits_again():
    wf = approval(timeout=60)
    wait = reach_wait(wf)
    WorkflowNode.objects.filter(pk=wait.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))
    engine.tick(wf.pk, scheduled=False)
    assert wf.retry() == 2
    wait.refresh_from_db()
    assert wait.state == S.WAITING and wait.timeout_at > timezone.now()
    assert wf.signal("approved") == 1


@pytest.mark.django_db
def test_complete__succeeds_one_waiting_node_once():
    wf = approval()
    wait = wf.nodes.get(kind="wait")
    assert wait.complete("early") is False
    wait = reach_wait(wf)
    assert wait.complete({"ok": 1}) is True
    assert (wait.state, wait.result) == (S.SUCCESS, {"ok": 1})
    assert wait.complete({"ok": 2}) is False


@pytest.mark.django_db
def test_signal__payload_that_cannot_be_stored_raises_and_changes_nothing():
    wf = approval()
    reach_wait(wf)
    with pytest.raises(ValidationError, match="Payload is not JSON-serialisable"):
        wf.signal("approved", {1, 2})
    assert wf.nodes.get(kind="wait").state == S.WAITING


@pytest.mark.django_db
def test_signal__while_paused_is_recorded_and_resume_releases_the_dependent():
    wf = approval()
    reach_wait(wf)
    assert wf.pause()
    assert wf.signal("approved", "yes") == 1
    assert after(wf).state == S.PENDING
    assert wf.resume()
    assert after(wf).state == S.QUEUED


def test_signal__racing_signals_complete_the_wait_exactly_once(transactional_db, monkeypatch):
    """Four threads, each on its own connection, signal at once: one completes, three find nothing."""
    from django_dyrygent.engine import messaging

    published = []
    monkeypatch.setattr(messaging, "publish", lambda wf_id, options, entries: published.extend(entries))
    monkeypatch.setattr(messaging, "send_tick", lambda *args, **kwargs: None)
    wf = approval()
    reach_wait(wf)
    barrier = threading.Barrier(4)
    answers = []

    def signal(i):
        try:
            barrier.wait()
            answers.append(engine.signal(wf.pk, "approved", {"from": i}))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=signal, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(answers) == [0, 0, 0, 1]
    wait = wf.nodes.get(kind="wait")
    assert wait.state == S.SUCCESS and wait.result in [{"from": i} for i in range(4)]
    follower = after(wf)
    assert follower.state == S.QUEUED and follower.publish_count == 1
    assert [node.pk for node, _args in published].count(follower.pk) == 1


# -- doors: command, JSON API --------------------------------------------------------------------


@pytest.mark.django_db
def test_dyrygent_signal__completes_and_reports(capsys):
    wf = approval()
    reach_wait(wf)
    call_command("dyrygent_signal", str(wf.pk), "approved", "--payload", json.dumps({"by": "cli"}))
    assert "completed 1 node(s)" in capsys.readouterr().out
    assert wf.nodes.get(kind="wait").result == {"by": "cli"}
    call_command("dyrygent_signal", str(wf.pk), "approved")
    assert "no node waits for 'approved'" in capsys.readouterr().out
    call_command("dyrygent_status", str(wf.pk))
    assert "approved (wait)" in capsys.readouterr().out


@pytest.mark.django_db
def test_api_signal__needs_its_permission_and_answers_the_count(django_user_model):
    wf = approval()
    reach_wait(wf)
    url = f"/dyrygent/workflows/{wf.pk}/signal/approved/"
    user = django_user_model.objects.create_user("approver")
    user.user_permissions.add(Permission.objects.get(codename="change_workflow"))
    client = Client()
    client.force_login(user)
    assert client.post(url).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="signal_workflow"))
    client.force_login(user)
    body = json.dumps({"payload": {"by": "api"}})
    assert client.get(f"/dyrygent/workflows/{wf.pk}/").status_code == 403  # no view permission
    user.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client.force_login(user)
    assert client.get(f"/dyrygent/workflows/{wf.pk}/").json()["waiting_for"] == ["approved"]
    answer = client.post(url, data=body, content_type="application/json")
    assert answer.status_code == 200 and answer.json()["completed"] == 1
    assert answer.json()["waiting_for"] == []
    assert client.post(url, data=body, content_type="application/json").json()["completed"] == 0
    bad = client.post(url, data=json.dumps({"payload": 1, "extra": 2}), content_type="application/json")
    assert bad.status_code == 400


@pytest.mark.django_db
def test_approve_waits__admin_action_needs_the_signal_permission(django_user_model):
    wf = approval()
    wait = reach_wait(wf)
    user = django_user_model.objects.create_user("reviewer", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_workflownode", "change_workflow"]))
    client = Client()
    client.force_login(user)
    changelist = "/admin/django_dyrygent/workflownode/"
    assert "approve_waits" not in client.get(changelist).content.decode()
    client.post(changelist, {"action": "approve_waits", "_selected_action": [wait.pk], "index": 0})
    wait.refresh_from_db()
    assert wait.state == S.WAITING
    user.user_permissions.add(Permission.objects.get(codename="signal_workflow"))
    client.force_login(django_user_model.objects.get(pk=user.pk))
    assert "reject_waits" in client.get(changelist).content.decode()
    response = client.post(changelist, {"action": "reject_waits", "_selected_action": [wait.pk], "index": 0},
                           follow=True)
    assert "1 waiting node answered." in response.content.decode()
    wait.refresh_from_db()
    assert (wait.state, wait.result) == (S.SUCCESS, {"approved": False, "by": "reviewer"})
    assert after(wf).state == S.QUEUED


# -- end to end on a real worker -------------------------------------------------------------------


@pytest.mark.worker
def test_signal__end_to_end_payload_is_passed_on_as_a_result(worker):
    wf = Workflow(name="approve-e2e", pass_results=True)
    before = wf.add_signature(record.si("before"))
    wait = wf.add_wait("approved", dependencies=[before])
    last = wf.add_signature(identity.s(), dependencies=[wait])
    wf.apply_async()
    wait_for(lambda: WorkflowNode.objects.get(pk=wait.pk).state == S.WAITING, "the wait to be reached")
    # The safety nets while it waits (the tick, the workers' sweep and recovery): it keeps waiting.
    engine.tick(wf.pk, scheduled=False)
    Sweeper().sweep_once(stale_after=0)
    assert WorkflowNode.objects.get(pk=wait.pk).state == S.WAITING
    assert wf.signal("approved", {"by": "alice"}) == 1
    assert wf.signal("approved", {"by": "mallory"}) == 0
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    last.refresh_from_db()
    assert last.result == {"by": "alice"}
    assert Execution.objects.filter(label="before").count() == 1
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded) == (3, 3, 3)
