"""A rolling restart and a paused worker, with real processes: no body runs twice, no report is taken twice.

A rolling restart starts a new worker, then sends SIGTERM to the old one's
main process while it runs a body: the old worker must stay alive to its
peers until its pool has drained. A worker paused (SIGSTOP) past the
liveness window is declared dead and its node re-run elsewhere; when it
wakes (SIGCONT) and reports the replaced task, the report is ignored and the
event log says so.
"""

import os
import signal
import time

from django.utils import timezone

from django_dyrygent.engine import outcomes
from django_dyrygent.models import WorkerHeartbeat, Workflow, WorkflowEvent, WorkflowNode
from tests.reliability import harness
from tests.reliability.tasks import hold, run

S = WorkflowNode.State
#: The suite's workers' liveness timeout (harness.FAST), in seconds.
TIMEOUT = float(harness.FAST["DYRYGENT_WORKER_TIMEOUT"])


def _release(label):
    (harness.runs_dir() / f"{label}.release").write_text("")


def _observing(rel, worker):
    """Start ``worker`` and wait until it has watched its peers for longer than the liveness timeout.

    Before that a judge finds no peer dead (it only counts silence it saw),
    so a fault injected earlier would not be judged at all.
    """
    rel.wait_ready(worker)
    first = WorkerHeartbeat.objects.get(hostname=worker.hostname).started_at
    harness.wait_for(lambda: (timezone.now() - first).total_seconds() > TIMEOUT + 1, TIMEOUT + 30,
                     what=f"{worker.hostname} watching for {TIMEOUT + 1:g}s")
    return worker


def _lost_worker_events(wf):
    return list(WorkflowEvent.objects.filter(workflow=wf, reason__startswith="worker lost")
                .values_list("reason", flat=True))


def test_rolling_restart__sigterm_to_the_old_worker_mid_body_runs_no_body_twice(rel):
    old = rel.ready_worker("old")
    wf, (body, after) = harness.chain_workflow("rolling", hold.si("roll-body", seconds=90), run.si("roll-after"))
    wf.apply_async()
    started = rel.wait_node(body.pk, {S.STARTED})
    assert started.worker_hostname == old.hostname
    _observing(rel, rel.worker("new"))
    os.kill(old.pid, signal.SIGTERM)  # the main process only: a warm shutdown that drains the pool
    sigterm = timezone.now()
    # Long enough for a peer to judge the old worker dead several times over, had it looked dead.
    time.sleep(TIMEOUT + 3)
    assert WorkflowNode.objects.get(pk=body.pk).task_id == started.task_id, _lost_worker_events(wf)
    assert old.alive(), old.log()[-3000:]  # still draining: the body holds a pool process
    beat = WorkerHeartbeat.objects.get(hostname=old.hostname)
    assert beat.stopped_at is None and beat.last_seen > sigterm
    assert started.task_id in beat.active_task_ids
    _release("roll-body")
    old.proc.wait(timeout=60)
    assert rel.wait_final(wf, 60) == Workflow.State.SUCCESS, rel.logs()
    body.refresh_from_db()
    assert (body.state, body.attempts, body.previous_task_ids) == (S.SUCCESS, 1, [])
    assert harness.runs("roll-body") == 1 and harness.runs("roll-after") == 1
    assert _lost_worker_events(wf) == []
    beat.refresh_from_db()
    # Marked stopped once its pool was empty; last_seen is a real beat, not a back-dated mark.
    assert beat.stopped_at is not None and beat.stopped_at >= beat.last_seen > sigterm
    assert beat.active_task_ids == []


def test_zombie_worker__woken_after_its_node_was_rerun_its_stale_report_is_ignored_and_logged(rel):
    zombie = rel.ready_worker("zombie")
    wf, (first, second) = harness.chain_workflow(
        "zombie", hold.si("z-first", seconds=90), hold.si("z-second", seconds=90),
    )
    wf.apply_async()
    started = rel.wait_node(first.pk, {S.STARTED})
    assert started.worker_hostname == zombie.hostname
    _observing(rel, rel.worker("peer"))
    os.killpg(zombie.pid, signal.SIGSTOP)  # main process and pool children, as a frozen VM or container
    try:
        # Declared dead past the liveness window: re-run on the peer, whose success releases the next node.
        rerun = rel.wait_node(first.pk, {S.SUCCESS}, timeout=60)
        # A message the paused worker's connection swallowed is republished too (not another attempt).
        assert (rerun.attempts, rerun.previous_task_ids[0]) == (2, started.task_id)
        rel.wait_node(second.pk, {S.STARTED}, timeout=60)
        _release("z-first")  # on waking, the first body returns and its worker reports the replaced task
    finally:
        os.killpg(zombie.pid, signal.SIGCONT)
    reason = f"{outcomes.STALE_REPORT}: SUCCESS of task {started.task_id}, replaced by {rerun.task_id}"
    stale = harness.wait_for(lambda: WorkflowEvent.objects.filter(node=first, reason=reason).first(), 30,
                             what="the woken worker's report, ignored")
    assert (stale.old_state, stale.new_state) == (S.SUCCESS, S.SUCCESS)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, first.task_id, first.attempts) == (S.SUCCESS, rerun.task_id, 2)
    assert second.state == S.STARTED and Workflow.objects.get(pk=wf.pk).state == Workflow.State.RUNNING
    _release("z-second")
    assert rel.wait_final(wf, 60) == Workflow.State.SUCCESS, rel.logs()
    assert (wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (2, 2, 0)
    assert harness.runs("z-first") == 2 and harness.runs("z-second") == 1
    # Released once, by the re-run (republished too if the paused worker's connection swallowed it).
    assert WorkflowEvent.objects.filter(node=second, old_state=S.PENDING, new_state=S.QUEUED).count() == 1
    assert WorkflowEvent.objects.filter(node=first, new_state=S.SUCCESS).exclude(old_state=S.SUCCESS).count() == 1
    assert zombie.alive()
