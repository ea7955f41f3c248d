"""Keep a worker alive through a Redis restart: the reconnect must not crash on kombu's detached transport.

When the consumer loses Redis, Celery's ``on_connection_error_after_connected``
first calls ``connection.collect()``, which detaches the transport from its
``Connection`` (``transport.client = None``), then ``connection.close()``,
which closes the default channel; the channel's QoS then restores the
messages the worker had reserved but not acknowledged, and building a Redis
client for that reads ``transport.client.hostname``: ``AttributeError:
'NoneType' object has no attribute 'hostname'``, which no one catches, and
the worker exits (kombu issues #582, #970). Seen on every Redis restart of
the chaos soak; reproduced by ``tests/reliability/test_broker_restart.py``.

``guard_redis_restore`` wraps the Redis QoS's ``restore_unacked`` so that on
a detached transport it restores nothing in memory and returns. Nothing is
lost by that: with Redis's ack emulation each reserved message is also kept
on the server (the ``unacked`` hash) and returned to its queue after the
visibility timeout by any worker (``restore_visible``); when the server
restarted empty those copies are gone with the queue, and the engine
republishes what its nodes still wait for (the sweep's lost-message repair).
"""

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

logger = logging.getLogger("django_dyrygent.broker")

RestoreUnacked = Callable[..., Any]


def _detached(qos: Any) -> bool:
    """Whether the QoS's channel belongs to a transport no ``Connection`` holds any more."""
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def guarded_restore(restore_unacked: RestoreUnacked) -> RestoreUnacked:
    @wraps(restore_unacked)
    def restore(self: Any, client: Any = None) -> Any:
        if client is None and _detached(self):
            reserved = len(self._delivered)
            self._delivered.clear()
            if reserved:
                logger.warning(
                    "Broker connection lost with %d reserved message(s): left to the broker's own copy "
                    "(returned after the visibility timeout, or republished by the sweep if the server "
                    "lost them)", reserved,
                )
            return None
        return restore_unacked(self, client)

    restore.dyrygent_guard = True  # type: ignore[attr-defined]
    return restore


def guard_redis_restore(sender: Any = None, **kwargs: Any) -> None:
    """worker_init: install the guard on kombu's Redis QoS (idempotent; nothing without redis-py)."""
    try:
        from kombu.transport import redis
    except ImportError:  # pragma: no cover - kombu always ships it; redis-py may be missing
        return
    qos = getattr(redis, "QoS", None)
    if qos is None or getattr(qos.restore_unacked, "dyrygent_guard", False):
        return
    qos.restore_unacked = guarded_restore(qos.restore_unacked)
