import threading

import pytest

from django_dyrygent import signals as dy_signals
from django_dyrygent.workflows import Workflow


@pytest.fixture
def hooks():
    """Connect celery-dyrygent style hooks through django_dyrygent.workflows; record every call.

    Yields (connect, calls): ``connect(name)`` registers a recorder for that
    hook; ``calls`` lists (hook name, workflow view, payload) in call order.
    Disconnected after the test, or later tests' workflows would reach them.
    """
    calls, lock, connected = [], threading.Lock(), []

    def connect(name):
        def handler(workflow, payload):
            with lock:
                calls.append((name, workflow, payload))

        Workflow.connect(name)(handler)
        connected.append((name, handler))
        return handler

    yield connect, calls
    for name, handler in connected:
        dy_signals.disconnect_compat_handler(name, handler)


@pytest.fixture(autouse=True)
def no_stray_ticks(request, settings):
    """Worker tests here never wait for the safety-net tick (events move the workflows, and the
    ERROR test ticks by hand); an hour-long interval keeps their scheduled ticks from firing
    inside later tests, after the workflow rows were flushed."""
    if request.node.get_closest_marker("worker"):
        settings.DYRYGENT_TICK_INTERVAL = 3600
