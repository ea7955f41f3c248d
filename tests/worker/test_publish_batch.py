"""A released group goes to the broker in one round trip where the transport batches (Redis).

Round trips that carry the nodes' messages (an LPUSH to their queue) are counted on the Redis client's
connections (each command or pipeline is one ``send_packed_command``): the
count must not grow with the number of messages. The messages go to a queue no worker consumes, so the
queue's length says how many arrived.
"""

import pytest
from celery import group
from django.conf import settings
from redis.connection import AbstractConnection

from django_dyrygent.models import Workflow, WorkflowNode
from tests.celery_app import app as celery_app
from tests.conftest import purge_queue
from tests.tasks import record

# The run's own queue name plus a suffix: runs sharing a broker must not share it.
PARKED = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-batch-parked"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def parked():
    with celery_app.producer_or_acquire() as producer:
        if not getattr(producer, "supports_batch_publish", False):
            pytest.skip("this broker's transport sends one message per round trip (no kombu batch)")
    purge_queue(PARKED)
    yield PARKED
    purge_queue(PARKED)


def _queued(name):
    with celery_app.connection_for_write() as conn:
        return conn.SimpleQueue(name).qsize()


def _start(width):
    wf = Workflow(name=f"batch-{width}")
    wf.add_celery_canvas(group(record.si(f"b{i}").set(queue=PARKED) for i in range(width)))
    return wf.apply_async()


@pytest.fixture
def round_trips(monkeypatch):
    sent = []
    real = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        packed = b"".join(command) if isinstance(command, list) else command
        if PARKED.encode() in packed and b"LPUSH" in packed.upper():  # carries messages of the nodes
            sent.append(packed.upper().count(b"LPUSH"))
        return real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def test_publish__the_roots_of_a_group_take_as_many_round_trips_for_40_tasks_as_for_4(parked, round_trips):
    _start(2)  # the first publish declares the queue: not counted below
    purge_queue(PARKED)

    counts = {}
    for width in (4, 40):
        round_trips.clear()
        wf = _start(width)
        counts[width] = len(round_trips)
        assert sum(round_trips) == width
        assert wf.start_sent is True
        assert _queued(PARKED) == width
        purge_queue(PARKED)
        queued = wf.nodes.filter(kind=WorkflowNode.Kind.TASK).values_list("state", "queued_at")
        assert {state for state, _at in queued} == {WorkflowNode.State.QUEUED}
        assert all(at is not None for _state, at in queued)
    assert counts[40] == counts[4] == 1, counts


def test_publish__a_batch_whose_round_trip_fails_is_sent_one_message_at_a_time(parked, monkeypatch, caplog):
    from kombu.transport import redis as kombu_redis

    def broken_flush(self):
        self.pipeline.reset()
        raise kombu_redis.BatchPublishError("the pipeline broke")

    monkeypatch.setattr(kombu_redis.PublishBatch, "flush", broken_flush)
    wf = _start(12)
    assert wf.start_sent is True
    assert _queued(PARKED) == 12  # each once: nothing of the failed round trip arrived
    queued = wf.nodes.filter(kind=WorkflowNode.Kind.TASK).values_list("queued_at", flat=True)
    assert all(at is not None for at in queued)  # none marked unpublished
    assert "one by one instead" in caplog.text
