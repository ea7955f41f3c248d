"""Faults of workers and of the database, with real processes: the end state of each workflow.

Every test starts its own prefork workers (``-c 2``) against the private
PostgreSQL and Redis of ``conftest.py``, injects one fault, and asserts the
final state of every node, how many times each body ran (files written by
the bodies) and that dependents were released once.
"""

import signal
import time

from django_dyrygent.models import Workflow, WorkflowEvent, WorkflowNode
from tests.reliability import harness
from tests.reliability.tasks import run

S = WorkflowNode.State


def _chain(name, *sigs):
    wf = Workflow(name=name)
    nodes, previous = [], None
    for sig in sigs:
        previous = wf.add_signature(sig, dependencies=[previous] if previous else None)
        nodes.append(previous)
    return wf, nodes


def test_pg_terminate_backend__during_a_task_records_success_not_failure(rel):
    w = rel.worker("term")
    rel.wait_ready(w)
    wf, (slow, after) = _chain("terminate", run.si("slow", seconds=3), run.si("after"))
    wf.apply_async()
    rel.wait_node(slow.pk, {S.STARTED})
    assert rel.pg.terminate_backends("dyrygent_rel") >= 1
    assert rel.wait_final(wf, 60) == Workflow.State.SUCCESS, rel.logs()
    slow.refresh_from_db()
    assert (slow.state, slow.attempts, slow.error) == (S.SUCCESS, 1, "")
    assert harness.runs("slow") == 1 and harness.runs("after") == 1
    assert not WorkflowEvent.objects.filter(new_state__in=[S.FAILURE, S.UPSTREAM_FAILED]).exists()
