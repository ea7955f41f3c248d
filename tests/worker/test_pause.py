"""Pause and resume: nothing new is published while paused, completions are still recorded,
resume releases what became ready meanwhile in one step and moves the deadline on.
"""

import re
from datetime import timedelta

import pytest
from celery import chain, group
from django.contrib.admin.sites import site
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from django_dyrygent import engine, signals
from django_dyrygent.admin.workflows import WorkflowAdmin
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import wait_for
from tests.models import Execution
from tests.tasks import hold, record

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State


def started_chain(*labels):
    """A RUNNING workflow (ticked in this process, nothing published: no worker, no commit)."""
    wf = Workflow(name="paused")
    wf.add_celery_canvas(chain(*(record.si(label) for label in labels)))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    wf.refresh_from_db()
    assert wf.state == W.RUNNING
    return wf


def task(wf, label):
    (found,) = [n for n in wf.nodes.all() if n.signature.get("args", [None])[:1] == [label]]
    return found


# -- the engine without a worker -----------------------------------------------------------------


@pytest.mark.django_db
def test_pause__returns_whether_the_state_changed():
    wf = Workflow(name="initial")
    wf.add_signature(record.si("a"))
    wf.apply_async()
    assert wf.pause() is False and wf.state == W.INITIAL
    assert wf.resume() is False
    engine.tick(wf.pk, scheduled=False)
    assert wf.pause() is True and wf.state == W.PAUSED and wf.paused_at is not None
    assert wf.next_tick_at is None
    assert wf.pause() is False and wf.state == W.PAUSED
    assert wf.resume() is True and wf.state == W.RUNNING and wf.paused_at is None
    assert wf.resume() is False and wf.state == W.RUNNING
    assert wf.next_tick_at is not None


@pytest.mark.django_db
def test_pause__completion_settles_counters_but_queues_nothing_until_resume():
    wf = started_chain("a", "b")
    a, b = task(wf, "a"), task(wf, "b")
    assert wf.pause()
    outcomes.node_succeeded(wf.pk, a.task_id, "A")
    a.refresh_from_db(), b.refresh_from_db(), wf.refresh_from_db()
    assert a.state == S.SUCCESS and a.result == "A"
    assert (b.state, b.waiting, b.publish_count) == (S.PENDING, 0, 0)
    assert wf.state == W.PAUSED and wf.nodes_done == 1

    assert wf.resume()
    b.refresh_from_db()
    assert (b.state, b.publish_count) == (S.QUEUED, 1)


@pytest.mark.django_db
def test_pause__workflow_whose_nodes_all_ended_stays_paused_through_tick_and_sweep():
    wf = started_chain("a")
    assert wf.pause()
    outcomes.node_succeeded(wf.pk, task(wf, "a").task_id, None)
    assert engine.tick(wf.pk, scheduled=False) == W.PAUSED
    assert engine.tick(wf.pk, scheduled=True) == W.PAUSED
    Workflow.objects.filter(pk=wf.pk).update(created_at=timezone.now() - timedelta(hours=1))
    engine.sweep(stale_after=0)
    wf.refresh_from_db()
    assert (wf.state, wf.nodes_done, wf.nodes_total, wf.next_tick_at) == (W.PAUSED, 1, 1, None)
    assert wf.resume()
    assert wf.state == W.SUCCESS


@pytest.mark.django_db
def test_pause__deadline_is_suspended_while_paused():
    wf = started_chain("a")
    deadline = wf.deadline
    assert wf.pause()
    # An hour passes while paused (moved with an UPDATE, not waited for).
    Workflow.objects.filter(pk=wf.pk).update(
        paused_at=wf.paused_at - timedelta(hours=1), deadline=deadline - timedelta(hours=1),
    )
    assert engine.tick(wf.pk, scheduled=False) == W.PAUSED  # no deadline check while paused
    assert wf.resume()
    assert wf.state == W.RUNNING
    # Both moved back one hour, then the deadline on by the (at least one hour) pause.
    assert wf.deadline >= deadline


@pytest.mark.django_db
def test_pause__past_deadline_ends_the_workflow_error_after_resume():
    wf = started_chain("a")
    assert wf.pause()
    Workflow.objects.filter(pk=wf.pk).update(deadline=timezone.now() - timedelta(hours=2),
                                             paused_at=timezone.now() - timedelta(minutes=1))
    assert wf.resume()
    assert engine.tick(wf.pk, scheduled=False) == W.ERROR


@pytest.mark.django_db
def test_pause__cancel_while_paused_cancels_and_resume_then_refuses():
    wf = started_chain("a", "b")
    assert wf.pause()
    assert wf.cancel() is True
    assert wf.state == W.CANCELED
    assert set(wf.nodes.values_list("state", flat=True)) == {S.CANCELED}
    assert wf.resume() is False and wf.pause() is False


@pytest.mark.django_db
def test_pause__retry_while_paused_resets_nodes_and_stays_paused():
    wf = started_chain("a", "b")
    a = task(wf, "a")
    outcomes.node_failed(wf.pk, a.task_id, RuntimeError("boom"))
    wf.refresh_from_db()
    assert wf.state == W.FAILURE
    assert wf.retry() == 2  # FAILURE -> RUNNING, a queued again
    assert wf.pause()
    a.refresh_from_db()
    outcomes.node_failed(wf.pk, a.task_id, RuntimeError("boom again"))
    assert wf.retry() == 2
    assert wf.state == W.PAUSED
    a.refresh_from_db()
    assert a.state == S.PENDING  # held: queued by resume
    assert wf.resume()
    a.refresh_from_db()
    assert a.state == S.QUEUED


@pytest.mark.django_db
def test_pause__workflow_state_changed_fires_on_pause_and_resume(django_capture_on_commit_callbacks):
    seen = []

    def receiver(sender, workflow, old_state, new_state, **kwargs):
        seen.append((old_state, new_state))

    wf = started_chain("a")
    signals.workflow_state_changed.connect(receiver)
    try:
        for change in (wf.pause, wf.resume):
            with django_capture_on_commit_callbacks() as callbacks:
                assert change()
            # Run the announcements only: resume's tick would go to the broker.
            for callback in callbacks:
                if getattr(callback, "__name__", "") == "announce":
                    callback()
    finally:
        signals.workflow_state_changed.disconnect(receiver)
    assert seen == [(W.RUNNING, W.PAUSED), (W.PAUSED, W.RUNNING)]


# -- doors: command, admin, JSON API ---------------------------------------------------------------


@pytest.mark.django_db
def test_dyrygent_pause_resume__commands_change_and_report(capsys):
    wf = started_chain("a")
    call_command("dyrygent_pause", str(wf.pk))
    assert "Paused workflow" in capsys.readouterr().out
    call_command("dyrygent_pause", str(wf.pk))
    assert "is PAUSED, not RUNNING" in capsys.readouterr().out
    call_command("dyrygent_status", str(wf.pk))
    out = capsys.readouterr().out
    assert "PAUSED" in out and "paused" in out
    call_command("dyrygent_resume", str(wf.pk))
    assert "Resumed workflow" in capsys.readouterr().out
    call_command("dyrygent_resume", str(wf.pk))
    assert "is RUNNING, not PAUSED" in capsys.readouterr().out


@pytest.mark.django_db
def test_pause_workflows__admin_actions_need_change_permission_and_report(admin_client):
    model_admin = WorkflowAdmin(Workflow, site)
    for name in ("pause_workflows", "resume_workflows"):
        assert getattr(model_admin, name).allowed_permissions == ("change",)
    wf = started_chain("a")
    response = admin_client.post("/admin/django_dyrygent/workflow/", {
        "action": "pause_workflows", "_selected_action": [wf.pk], "index": 0,
    }, follow=True)
    wf.refresh_from_db()
    assert wf.state == W.PAUSED
    assert "1 workflow paused." in response.content.decode()
    page = admin_client.get(f"/admin/django_dyrygent/workflow/{wf.pk}/change/").content.decode()
    assert "dy-s-PAUSED" in page and "resume_workflows" in page
    admin_client.post(f"/admin/django_dyrygent/workflow/{wf.pk}/act/resume_workflows/")
    wf.refresh_from_db()
    assert wf.state == W.RUNNING


def _tick_form(page):
    (form,) = re.findall(r'<form [^>]*data-action="tick_workflows"[^>]*>', page)
    return form


@pytest.mark.django_db
def test_tick_workflows__not_offered_on_a_paused_workflow_and_the_action_says_why(admin_client):
    wf = started_chain("a")
    change = f"/admin/django_dyrygent/workflow/{wf.pk}/change/"
    assert " hidden" not in _tick_form(admin_client.get(change).content.decode())
    wf.pause()
    assert _tick_form(admin_client.get(change).content.decode()).endswith(" hidden>")
    status = admin_client.get(f"/admin/django_dyrygent/workflow/{wf.pk}/status.json").json()
    assert status["actions"]["tick_workflows"] is False and status["actions"]["resume_workflows"] is True
    ticks = Workflow.objects.get(pk=wf.pk).ticks
    response = admin_client.post("/admin/django_dyrygent/workflow/", {
        "action": "tick_workflows", "_selected_action": [wf.pk], "index": 0,
    }, follow=True)
    page = response.content.decode()
    assert "1 workflow is paused and was not ticked: a tick publishes nothing until it is resumed." in page
    assert "ticked." not in page
    assert Workflow.objects.get(pk=wf.pk).ticks == ticks
    wf.resume()
    assert " hidden" not in _tick_form(admin_client.get(change).content.decode())


@pytest.mark.django_db
def test_api_pause_resume__answers_and_conflicts(django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("pauser")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_workflow", "change_workflow"]))
    client = Client()
    client.force_login(user)
    wf = started_chain("a")
    url = f"/dyrygent/workflows/{wf.pk}/"
    paused = client.post(url + "pause/")
    assert paused.status_code == 200 and paused.json()["state"] == "PAUSED" and paused.json()["paused_at"]
    again = client.post(url + "pause/")
    assert again.status_code == 409 and "not RUNNING" in again.json()["error"]
    resumed = client.post(url + "resume/")
    assert resumed.status_code == 200 and resumed.json()["state"] == "RUNNING"
    assert client.post(url + "resume/").status_code == 409


# -- end to end on a real worker -------------------------------------------------------------------


@pytest.mark.worker
def test_pause__tasks_in_flight_finish_nothing_new_published_then_resume_succeeds(worker):
    wf = Workflow(name="pause-e2e")
    wf.add_celery_canvas(chain(
        group(hold.si("p1"), hold.si("p2"), hold.si("p3")),
        group(record.si("after-1"), record.si("after-2")),
        record.si("last"),
    ))
    wf.apply_async()
    holds = wf.nodes.filter(task_name="tests.hold")
    wait_for(lambda: holds.filter(state=S.STARTED).count() == 3, "the three holds to start")
    assert wf.pause() is True
    for flag in ("p1", "p2", "p3"):
        Execution.objects.create(label=f"release:{flag}")
    wait_for(lambda: holds.filter(state=S.SUCCESS).count() == 3, "the holds to be recorded")
    # Run the safety nets too: they must neither publish nor finish a paused workflow.
    assert engine.tick(wf.pk, scheduled=False) == W.PAUSED
    engine.sweep(stale_after=0)
    wf.refresh_from_db()
    followers = wf.nodes.filter(task_name="tests.record")
    assert wf.state == W.PAUSED and wf.nodes_done == 3
    assert set(followers.values_list("state", flat=True)) == {S.PENDING}
    assert not Execution.objects.filter(label__startswith="after").exists()

    assert wf.resume() is True
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    assert sorted(Execution.objects.filter(label__in=["after-1", "after-2", "last"])
                  .values_list("label", flat=True)) == ["after-1", "after-2", "last"]
    assert set(wf.nodes.filter(kind="task").values_list("publish_count", flat=True)) == {1}


@pytest.mark.worker
def test_pause__racing_completions_publish_nothing_after_the_pause(worker):
    """Pause while eight chains complete steps: what was published before the pause is all that runs."""
    wf = Workflow(name="pause-race")
    # Each step takes a little while: the pause lands among completions, not after the last one.
    wf.add_celery_canvas(group(
        chain(*(record.si(f"c{i}-{step}", sleep=0.2) for step in (1, 2, 3))) for i in range(8)
    ))
    wf.apply_async()
    wait_for(lambda: wf.nodes.filter(state=S.SUCCESS).exists(), "a first completion")
    assert wf.pause() is True
    # The pause committed: every node published before it is QUEUED, STARTED, RETRY or done now.
    published = set(wf.nodes.exclude(state=S.PENDING).values_list("pk", flat=True))
    active = wf.nodes.filter(state__in=[S.QUEUED, S.STARTED, S.RETRY])
    wait_for(lambda: not active.exists(), "the tasks in flight to be recorded")
    assert set(wf.nodes.exclude(state=S.PENDING).values_list("pk", flat=True)) == published
    wf.refresh_from_db()
    assert wf.state == W.PAUSED
    assert wf.resume() is True
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    assert Execution.objects.filter(label__startswith="c").count() == 24
    assert set(wf.nodes.filter(kind="task").values_list("publish_count", flat=True)) == {1}
