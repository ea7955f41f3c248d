"""A timer survives a worker restart: real subprocess workers, the first stopped by its pid.

The timer's due time is a column of its row, so nothing the stopped worker
held (the countdown tick in its memory, its connections) is needed: the
next worker's tick or sweep fires it, once, and the node after it runs once.
"""

from datetime import timedelta

from django.utils import timezone

from django_dyrygent.models import Workflow, WorkflowEvent, WorkflowNode
from tests.reliability import harness
from tests.reliability.tasks import run

S = WorkflowNode.State


def test_timer__survives_a_worker_restart_and_fires_once_at_or_after_its_time(rel):
    first = rel.ready_worker("before-restart")
    wf = Workflow(name="timer-restart")
    before = wf.add_signature(run.si("timer-before"))
    timer = wf.add_timer(dependencies=[before], delay=3600, name="cool-down")
    wf.add_signature(run.si("timer-after"), dependencies=[timer])
    wf.apply_async()
    due = rel.wait_node(timer.pk, {S.WAITING}).timeout_at
    first.stop()  # SIGTERM to its pid, waited for: a warm shutdown, as a deploy does
    assert not first.alive()
    stopped = rel.node(timer.pk)
    assert (stopped.state, stopped.timeout_at) == (S.WAITING, due)
    rel.ready_worker("after-restart")
    # The due time moves near (an UPDATE, not an hour's sleep); the new worker is what fires it.
    due = timezone.now() + timedelta(seconds=2)
    WorkflowNode.objects.filter(pk=timer.pk).update(timeout_at=due)
    assert rel.wait_final(wf, 90) == Workflow.State.SUCCESS, rel.logs()
    fired = rel.node(timer.pk)
    assert (fired.state, fired.reason) == (S.SUCCESS, "timer fired")
    assert fired.finished_at >= due
    assert WorkflowEvent.objects.filter(node_id=timer.pk, new_state=S.SUCCESS).count() == 1
    assert harness.runs("timer-before") == 1 and harness.runs("timer-after") == 1
