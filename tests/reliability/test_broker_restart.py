"""A Redis restart under a busy worker: the worker stays up and consumes from the new server.

The chaos soak's workers exited on every Redis restart with kombu's
``AttributeError: 'NoneType' object has no attribute 'hostname'`` and
needed the supervisor. Here a real prefork worker runs a workflow while its
private ``redis-server`` is stopped and started again, empty, on the same
port; the worker process must still be the same one afterwards and run a new
workflow to its end.
"""

import time

import pytest

from tests.reliability import harness
from tests.reliability.tasks import run

pytestmark = pytest.mark.django_db(transaction=True)


def _restart_redis(rel, down_for):
    rel.redis.stop()
    time.sleep(down_for)  # the outage itself, not a wait for a condition
    rel.redis.start()


def test_broker_restart__the_worker_survives_a_redis_restart_mid_traffic(rel):
    worker = rel.ready_worker("redis-restart")
    wf, _ = harness.chain_workflow("before", *(run.si(f"before{i}", seconds=0.3) for i in range(12)))
    wf.apply_async()
    harness.wait_for(lambda: harness.runs("before2"), 60, what="the chain under way")
    for down_for in (0.5, 2.0):
        _restart_redis(rel, down_for)
        # The worker reconnects (or exits) within its broker's retry schedule: a new workflow tells which.
        after, _ = harness.chain_workflow(f"after-{down_for}", run.si(f"after-{down_for}"))
        after.apply_async()
        assert rel.wait_final(after, timeout=90) == "SUCCESS", rel.logs()
        assert worker.alive(), rel.logs()
    log = worker.log()
    assert "has no attribute 'hostname'" not in log, log[-4000:]
    assert rel.wait_final(wf, timeout=120) == "SUCCESS", rel.logs()
