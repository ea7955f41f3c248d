"""Django signals and celery-dyrygent style handlers during a real run on the worker."""

import logging
import threading

import pytest
from celery import chain, group
from django.db import connection

from django_dyrygent import signals
from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import wait_for
from tests.tasks import record

pytestmark = pytest.mark.worker

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State
SIGNALS = {
    "workflow_state_changed": signals.workflow_state_changed,
    "workflow_finished": signals.workflow_finished,
    "workflow_active_tick": signals.workflow_active_tick,
    "node_state_changed": signals.node_state_changed,
}


@pytest.fixture
def received():
    """Connect a recorder to every engine signal; each call notes what the database said then."""
    calls = []
    lock = threading.Lock()

    def recorder(name):
        def receive(sender, **kwargs):
            seen = {"in_transaction": connection.in_atomic_block}
            if "workflow" in kwargs:
                seen["workflow_row_state"] = (
                    Workflow.objects.filter(pk=kwargs["workflow"].pk).values_list("state", flat=True).first()
                )
            if "node" in kwargs:
                seen["node_row_state"] = (
                    WorkflowNode.objects.filter(pk=kwargs["node"].pk).values_list("state", flat=True).first()
                )
            with lock:
                calls.append((name, sender, kwargs, seen))

        return receive

    receivers = {name: recorder(name) for name in SIGNALS}
    for name, signal in SIGNALS.items():
        signal.connect(receivers[name], weak=False)
    yield calls
    for name, signal in SIGNALS.items():
        signal.disconnect(receivers[name])


def test_signals__sent_after_commit_with_their_arguments_during_a_real_run(worker, received):
    wf = Workflow(name="signals")
    wf.add_celery_canvas(chain(record.si("a"), group(record.si("b"), record.si("c")), record.si("d")))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    wait_for(lambda: any(c[0] == "workflow_finished" for c in received), "workflow_finished")
    task_nodes = {n.pk: n for n in wf.nodes.filter(kind=WorkflowNode.Kind.TASK)}

    for name, sender, kwargs, seen in received:
        assert sender is Workflow
        # Sent from on_commit callbacks: no transaction open, the change already visible.
        assert seen["in_transaction"] is False, (name, kwargs)

    changes = [
        (kw["old_state"], kw["new_state"], seen["workflow_row_state"])
        for name, _s, kw, seen in received
        if name == "workflow_state_changed" and kw["workflow"].pk == wf.pk
    ]
    assert [(old, new) for old, new, _row in changes] == [(W.INITIAL, W.RUNNING), (W.RUNNING, W.SUCCESS)]
    assert changes[-1][2] == W.SUCCESS

    finished = [kw["workflow"] for name, _s, kw, _seen in received if name == "workflow_finished"]
    assert [w.pk for w in finished] == [wf.pk] and finished[0].state == W.SUCCESS

    # Every task node is announced as published exactly once, in the step that published it.
    ticks = [kw for name, _s, kw, _seen in received if name == "workflow_active_tick"]
    assert all(kw["workflow"].pk == wf.pk for kw in ticks)
    published = [node.pk for kw in ticks for node in kw["nodes"]]
    assert sorted(published) == sorted(task_nodes)
    assert len(ticks) == 3  # a; then b and c together; then d

    node_changes = {}
    for name, _s, kw, seen in received:
        if name == "node_state_changed":
            node_changes.setdefault(kw["node"].pk, []).append((kw["new_state"], seen["node_row_state"]))
    assert set(node_changes) == set(task_nodes)  # joins are internal: not announced
    for seq in node_changes.values():
        assert [new for new, _row in seq if new != S.STARTED] == [S.QUEUED, S.SUCCESS]
        assert S.STARTED in [new for new, _row in seq]
        assert dict(seq)[S.SUCCESS] == S.SUCCESS


def test_signals__failing_receiver_is_logged_and_the_workflow_still_succeeds(worker, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver is broken")

    for signal in SIGNALS.values():
        signal.connect(broken, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="django_dyrygent.signals"):
            wf = Workflow(name="broken-receiver")
            wf.add_celery_canvas(chain(record.si("a"), record.si("b")))
            wf.apply_async()
            assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
            wait_for(
                lambda: sum("receiver is broken" in r.getMessage() for r in caplog.records) >= 4,
                "the receiver failures to be logged",
            )
    finally:
        for signal in SIGNALS.values():
            signal.disconnect(broken)
    assert wf.nodes.filter(state=S.SUCCESS).count() == 2
    logged = [r for r in caplog.records if r.name == "django_dyrygent.signals"]
    assert logged and all(r.levelno == logging.ERROR and r.exc_info for r in logged)


def test_connect__compat_handlers_get_workflow_and_payload(worker, compat_handler):
    calls = []
    lock = threading.Lock()

    def handler_for(name):
        def handler(workflow, payload):
            with lock:
                calls.append((name, workflow, payload))

        return handler

    for name in ("on_state_change", "on_finish", "after_active_tick"):
        compat_handler(name, handler_for(name))
    wf = Workflow(name="compat")
    wf.add_celery_canvas(chain(record.si("a"), group(record.si("b"), record.si("c"))))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    wait_for(lambda: any(c[0] == "on_finish" for c in calls), "on_finish")

    assert all(isinstance(w, Workflow) and w.pk == wf.pk for _n, w, _p in calls)
    assert [p for n, _w, p in calls if n == "on_state_change"] == [W.RUNNING, W.SUCCESS]
    assert [p for n, _w, p in calls if n == "on_finish"] == [None]
    assert [p for n, _w, p in calls if n == "after_active_tick"] == [None, None]


def test_connect__unknown_signal_name_raises_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="'on_explosion'.*after_active_tick, on_finish, on_state_change"):
        @Workflow.connect("on_explosion")
        def handler(workflow, payload):
            pass
