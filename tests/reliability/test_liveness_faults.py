"""Faults of workers and of the database, with real processes: the end state of each workflow.

Every test starts its own prefork workers (``-c 2``) against the private
PostgreSQL and Redis of ``conftest.py``, injects one fault, and asserts the
final state of every node, how many times each body ran (files written by
the bodies) and that dependents were released once.
"""

import os
import signal
import time

import pytest
from celery import chain, current_app, group
from django.db.models import Max
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.engine.messaging import HEADER
from django_dyrygent.models import Workflow, WorkflowEvent, WorkflowNode
from tests.reliability import harness
from tests.reliability.tasks import die, run, run_late

S = WorkflowNode.State


def test_pg_terminate_backend__during_a_task_records_success_not_failure(rel):
    rel.ready_worker("term")
    wf, (slow, after) = harness.chain_workflow("terminate", run.si("slow", seconds=3), run.si("after"))
    wf.apply_async()
    rel.wait_node(slow.pk, {S.STARTED})
    assert rel.pg.terminate_backends("dyrygent_rel") >= 1
    assert rel.wait_final(wf, 60) == Workflow.State.SUCCESS, rel.logs()
    slow.refresh_from_db()
    assert (slow.state, slow.attempts, slow.error) == (S.SUCCESS, 1, "")
    assert harness.runs("slow") == 1 and harness.runs("after") == 1
    assert not WorkflowEvent.objects.filter(new_state__in=[S.FAILURE, S.UPSTREAM_FAILED]).exists()


def _figure(rel, name, seconds):
    """Keep a measured figure (docs/reliability.md reports them) in the suite's directory and the output."""
    line = f"{name}: {seconds:.1f}s"
    print(line)
    with open(rel.base / "figures.txt", "a") as out:
        out.write(line + "\n")


def _group(name, label, count, seconds=0.0):
    wf = Workflow(name=name)
    wf.add_celery_canvas(group(run.si(label, seconds=seconds) for _ in range(count)))
    return wf.apply_async()


def _failures():
    return WorkflowEvent.objects.filter(new_state__in=[S.FAILURE, S.UPSTREAM_FAILED]).count()


def test_database_restart__a_new_workflow_succeeds_with_db_reuse_max(rel):
    rel.ready_worker("restart")
    warm = _group("warm-up", "warm", 10, seconds=0.05)
    assert rel.wait_final(warm, 60) == Workflow.State.SUCCESS  # both pool children hold a connection
    rel.restart_database()
    wf = _group("after-restart", "after-restart", 20)
    assert rel.wait_final(wf, 60) == Workflow.State.SUCCESS, rel.logs()
    assert wf.nodes_succeeded == 20 and harness.runs("after-restart") == 20
    assert _failures() == 0


def test_database_stopped_during_a_task__outcome_recorded_when_it_is_back(rel):
    rel.ready_worker("pgstop")
    wf, (slow, after) = harness.chain_workflow("pg-stop", run.si("slow", seconds=3), run.si("after"))
    wf.apply_async()
    rel.wait_node(slow.pk, {S.STARTED})
    rel.stop_database()
    harness.wait_for(lambda: harness.ends("slow") == 1, 30, what="the body's end while the database is away")
    rel.start_database()
    assert rel.wait_final(wf, 90) == Workflow.State.SUCCESS, rel.logs()
    slow.refresh_from_db()
    after.refresh_from_db()
    assert slow.state == after.state == S.SUCCESS
    # Recorded by the retrying worker (1 run), or re-run by the sweep if that ran out (2).
    assert harness.runs("slow") == slow.attempts and slow.attempts in (1, 2)
    assert harness.runs("after") == 1 and _failures() == 0


@pytest.mark.parametrize("body", [run, run_late], ids=["acks_early", "acks_late"])
def test_worker_killed__whole_group_recovered_within_60s_of_a_replacement_with_default_settings(rel, body):
    """With acks_late too: recovery does not wait for the broker's visibility timeout (1 h on Redis)."""
    doomed = rel.ready_worker("doomed", env={})
    wf, (long, nxt) = harness.chain_workflow("kill-9", body.si("long", seconds=4), run.si("next"))
    wf.apply_async()
    first_id = rel.wait_node(long.pk, {S.STARTED}).task_id
    doomed.kill(signal.SIGKILL)
    rel.ready_worker("replacement", env={})
    up = time.monotonic()
    assert rel.wait_final(wf, 90) == Workflow.State.SUCCESS, rel.logs()
    took = time.monotonic() - up
    _figure(rel, "whole worker kill -9, default settings: replacement up -> workflow SUCCESS", took)
    assert took <= 60
    long.refresh_from_db()
    assert (long.state, long.attempts, long.previous_task_ids) == (S.SUCCESS, 2, [first_id])
    assert harness.runs("long") == 2 and harness.runs("next") == 1
    assert WorkflowEvent.objects.filter(node=long, reason__startswith="worker lost").exists()


def test_sigterm_to_the_worker_group__no_failure_cascade_and_recovered(rel):
    w = rel.ready_worker("systemd")
    wf = Workflow(name="sigterm")
    roots = [wf.add_signature(run.si(label, seconds=4)) for label in ("a", "b")]
    for root in roots:
        for _ in range(5):
            wf.add_signature(run.si(f"dep-{root.signature['args'][0]}"), dependencies=[root])
    wf.apply_async()
    for root in roots:
        rel.wait_node(root.pk, {S.STARTED})
    w.kill(signal.SIGTERM, wait=60)
    rel.ready_worker("after-sigterm")
    assert rel.wait_final(wf, 60) == Workflow.State.SUCCESS, rel.logs()
    assert _failures() == 0
    for root in roots:
        root.refresh_from_db()
        assert root.state == S.SUCCESS and harness.runs(root.signature["args"][0]) == root.attempts
    assert harness.runs("dep-a") == harness.runs("dep-b") == 5


def test_pool_child_killed__node_rerun_and_lost_worker_retries_honoured(rel):
    w = rel.ready_worker("oom")
    wf = Workflow(name="child-kill")
    victim = wf.add_signature(run.si("victim", seconds=3))
    dependent = wf.add_signature(run.si("victim-dep"), dependencies=[victim])
    three = wf.add_signature(die.si("always-3"), max_attempts=3)
    default = wf.add_signature(die.si("always-default"))
    wf.apply_async()
    rel.wait_node(victim.pk, {S.STARTED})
    harness.wait_for(lambda: harness.run_pids("victim"), 10, what="victim's pid")
    os.kill(harness.run_pids("victim")[0], signal.SIGKILL)
    assert rel.wait_final(wf, 90) == Workflow.State.FAILURE, rel.logs()
    for node in (victim, dependent, three, default):
        node.refresh_from_db()
    assert (victim.state, victim.attempts, harness.runs("victim")) == (S.SUCCESS, 2, 2)
    assert dependent.state == S.SUCCESS and harness.runs("victim-dep") == 1
    assert (three.state, three.attempts, harness.runs("always-3")) == (S.FAILURE, 3, 3)
    assert "Worker lost 3 time(s)" in three.error
    assert (default.state, default.attempts, harness.runs("always-default")) == (S.FAILURE, 2, 2)
    assert "Worker lost 2 time(s)" in default.error
    assert w.alive()


def test_dag_killed_midway__prefetched_queued_nodes_recovered_promptly(rel):
    doomed = rel.ready_worker("dag")
    wf = Workflow(name="dag")
    wf.add_celery_canvas(chain(group(run.si("n", seconds=0.3) for _ in range(40)), run.si("end")))
    wf.apply_async()
    harness.wait_for(lambda: harness.runs("n") >= 10, 60, what="10 bodies run")
    doomed.kill(signal.SIGKILL)
    held = WorkflowNode.objects.filter(workflow=wf, state=S.QUEUED).count()
    rel.ready_worker("dag-replacement")
    up = time.monotonic()
    assert rel.wait_final(wf, 90) == Workflow.State.SUCCESS, rel.logs()
    _figure(rel, f"DAG of 41 killed mid-way ({held} QUEUED at the kill), 1 s heartbeats / 6 s worker timeout: "
                 "replacement up -> workflow SUCCESS", time.monotonic() - up)
    nodes = WorkflowNode.objects.filter(workflow=wf, kind=WorkflowNode.Kind.TASK)
    assert all(n.state == S.SUCCESS for n in nodes)
    # At most the two bodies running at the kill ran twice.
    assert 40 <= harness.runs("n") <= 42 and harness.runs("end") == 1
    assert WorkflowEvent.objects.filter(workflow=wf, reason__startswith="republished: message lost").exists()


def test_healthy_backlog__no_message_republished_and_every_body_ran_once(rel):
    rel.ready_worker("backlog")
    wf = _group("backlog", "b", 300, seconds=0.05)
    assert rel.wait_final(wf, 180) == Workflow.State.SUCCESS, rel.logs()
    assert harness.runs("b") == 300
    assert WorkflowNode.objects.filter(workflow=wf).aggregate(m=Max("publish_count"))["m"] == 1
    assert not WorkflowEvent.objects.filter(reason__startswith="republished").exists()


def test_duplicate_delivery__dependents_released_once(rel):
    rel.ready_worker("dup")
    wf, (first, second) = harness.chain_workflow("duplicate", run.si("dup-a", seconds=1), run.si("dup-b"))
    wf.apply_async()
    rel.wait_node(first.pk, {S.STARTED})
    current_app.send_task("rel.run", args=["dup-a"], kwargs={"seconds": 1}, task_id=first.task_id,
                          headers={HEADER: str(wf.pk)})
    assert rel.wait_final(wf, 60) == Workflow.State.SUCCESS, rel.logs()
    harness.wait_for(lambda: harness.ends("dup-a") == 2, 30, what="the duplicate's body to end")
    time.sleep(2)  # its report, sent after the body, reaches the ended workflow
    second.refresh_from_db()
    assert second.state == S.SUCCESS and second.publish_count == 1 and harness.runs("dup-b") == 1
    assert WorkflowEvent.objects.filter(node=second, new_state=S.QUEUED).count() == 1


def test_broker_down_at_apply_async__the_workers_sweep_starts_it_within_60s_without_beat(rel):
    """The caller is told the start was not sent; a worker with default settings starts it by itself."""
    rel.redis.stop()
    try:
        wf, (first, second) = harness.chain_workflow("broker-down", run.si("bd-first"), run.si("bd-second"))
        wf.apply_async()
        assert wf.start_sent is False and wf.start_error is not None
        wf.refresh_from_db()
        # Started by apply_async; its root, known unpublished, is due at once: the next sweep
        # publishes it, not one DYRYGENT_REQUEUE_AFTER later.
        assert wf.state == Workflow.State.RUNNING
        root = WorkflowNode.objects.get(pk=first.pk)
        assert root.state == WorkflowNode.State.QUEUED and root.queued_at is None
        assert wf.pk in [row[0] for row in engine.due_workflows(timezone.now(), 100)]
    finally:
        rel.redis.start()
    rel.ready_worker("after-outage", env={})  # no beat anywhere: only the workers' own sweep
    up = time.monotonic()
    assert rel.wait_final(wf, 90) == Workflow.State.SUCCESS, rel.logs()
    took = time.monotonic() - up
    _figure(rel, "start sent while the broker was down: replacement up -> workflow SUCCESS", took)
    assert took <= 60
    assert harness.runs("bd-first") == 1 and harness.runs("bd-second") == 1
