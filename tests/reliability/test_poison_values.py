"""Poison values: a value a database column cannot hold costs its node, never the workflow.

PostgreSQL refuses NUL in text and jsonb and lone surrogates in jsonb; SQLite
stores them. The engine checks for them on every database, so a result is
refused the same way everywhere (the node fails with a message saying where
the character is), and text meant for people (errors, tracebacks, reasons)
is stored with the character escaped. Nothing here may take the
DYRYGENT_REQUEUE_AFTER detour (300 s) the issue measured: waits are short.
"""

import json
from datetime import timedelta

import pytest
from celery import chain, group
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from django_dyrygent import engine
from django_dyrygent.engine import messaging, outcomes
from django_dyrygent.models import Workflow, WorkflowNode
from django_dyrygent.serialization import storable_text, unstorable
from tests.conftest import wait_worker_idle
from tests.models import Execution
from tests.reliability.relb_tasks import poison_error, poison_result
from tests.tasks import on_end, record

S = WorkflowNode.State
TIMEOUT = 30


def node(wf, task_name, first_arg=None):
    """The node of ``task_name`` (whose first argument is ``first_arg``, compared in Python:
    a JSON key lookup, signature__args__0=..., finds nothing on MariaDB under Django 4.2)."""
    (found,) = [n for n in wf.nodes.filter(task_name=task_name)
                if first_arg is None or n.signature["args"][:1] == [first_arg]]
    return found


# -- the checks themselves ---------------------------------------------------------------------


def test_unstorable__names_where_the_poison_character_is():
    assert unstorable({"a": [1, "ok", "b\x00d"]}) == "result['a'][2] contains a NUL character (\\x00)"
    assert unstorable(["x\ud800"]) == "result[0] contains a lone surrogate (\\ud800)"
    assert unstorable({"k\x00": 1}) == "a key of result contains a NUL character (\\x00)"
    assert unstorable({"fine": ["é", "😀", 1.5, None]}) is None


def test_storable_text__escapes_nul_and_lone_surrogates_and_keeps_the_rest():
    assert storable_text("a\x00b") == "a\\x00b"
    assert storable_text("x\ud800y é😀") == "x\\ud800y é😀"
    assert storable_text("plain") == "plain"


# -- end to end, real worker -------------------------------------------------------------------


@pytest.mark.worker
def test_poison_result__fails_only_its_node_and_the_workflow_ends_failure_promptly(worker):
    wf = Workflow(name="poison-result")
    wf.add_celery_canvas(group(
        chain(poison_result.si("nul"), record.si("after-nul")),
        poison_result.si("surrogate"),
        poison_result.si("key"),
        record.si("fine"),
    ))
    wf.link_error(on_end.s("error"))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.FAILURE  # not ERROR, and no 300 s detour
    nul = node(wf, "tests.reliability.poison_result", "nul")
    surrogate = node(wf, "tests.reliability.poison_result", "surrogate")
    key = node(wf, "tests.reliability.poison_result", "key")
    assert nul.state == surrogate.state == key.state == S.FAILURE
    assert "result contains a NUL character (\\x00)" in nul.error
    assert "result contains a lone surrogate (\\ud800)" in surrogate.error
    assert "a key of result contains a NUL character" in key.error
    assert node(wf, "tests.record", "after-nul").state == S.UPSTREAM_FAILED
    assert node(wf, "tests.record", "fine").state == S.SUCCESS
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_failed, wf.nodes_succeeded) == (5, 5, 4, 1)
    # A FAILURE, not an engine error: the workflow names its first failed node, nothing more.
    assert wf.engine_errors == 0 and wf.error.startswith("First failure: tests.reliability.poison_result [")
    error_cb = wf.nodes.get(kind=WorkflowNode.Kind.ERROR_CALLBACK)
    deadline = timezone.now() + timedelta(seconds=TIMEOUT)
    while WorkflowNode.objects.get(pk=error_cb.pk).state != S.SUCCESS and timezone.now() < deadline:
        wait_worker_idle(1)
    assert WorkflowNode.objects.get(pk=error_cb.pk).state == S.SUCCESS
    ran = list(Execution.objects.values_list("label", flat=True))
    assert sorted(ran) == sorted(["poison:nul", "poison:surrogate", "poison:key", "fine", f"error:{wf.pk}"])


@pytest.mark.worker
def test_poison_error__a_nul_in_the_exception_message_is_stored_escaped(worker):
    wf = Workflow(name="poison-error")
    wf.add_celery_canvas(chain(poison_error.si(), record.si("after")))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.FAILURE
    failed = node(wf, "tests.reliability.poison_error")
    assert failed.state == S.FAILURE
    assert "\x00" not in failed.error
    # On PostgreSQL django-celery-results cannot store this traceback, so Celery never
    # sends task_failure for it; the task_internal_error receiver records it instead.
    assert "PoisonError: bad\\x00message" in failed.error, failed.error
    assert node(wf, "tests.record", "after").state == S.UPSTREAM_FAILED
    assert Execution.objects.filter(label="poison:error").count() == 1
    assert not Execution.objects.filter(label="after").exists()


# -- the tick: one bad node never makes every tick fail -------------------------------------------


def _stale_queued(wf, monkeypatch):
    """Start ``wf`` without publishing anything, then age its QUEUED nodes past REQUEUE_AFTER."""
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: None)
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    WorkflowNode.objects.filter(workflow=wf, state=S.QUEUED).update(
        queued_at=timezone.now() - timedelta(hours=1)
    )


def _backend_row(task_id, status, result, content_type="application/json"):
    TaskResult.objects.create(task_id=task_id, status=status, result=result, content_type=content_type,
                              content_encoding="utf-8")


@pytest.mark.django_db(transaction=True)
def test_reconcile__an_undecodable_or_poison_backend_result_fails_that_node_only(monkeypatch):
    wf = Workflow(name="poison-reconcile")
    garbled = wf.add_signature(record.si("garbled"))
    poisoned = wf.add_signature(record.si("poisoned"))
    good = wf.add_signature(record.si("good"))
    after = wf.add_signature(record.si("after"), dependencies=[good])
    _stale_queued(wf, monkeypatch)
    _backend_row(garbled.task_id, "SUCCESS", "{not json")
    _backend_row(poisoned.task_id, "SUCCESS", json.dumps("a\x00b"))  # JSON text: the backend holds it
    _backend_row(good.task_id, "SUCCESS", json.dumps("good"))

    assert engine.tick(wf.pk, scheduled=False) == Workflow.State.RUNNING
    wf.refresh_from_db()
    assert wf.engine_errors == 0, wf.error
    states = dict(wf.nodes.values_list("signature__args__0", "state"))
    assert states == {"garbled": S.FAILURE, "poisoned": S.FAILURE, "good": S.SUCCESS, "after": S.QUEUED}
    assert "cannot be decoded" in WorkflowNode.objects.get(pk=garbled.pk).error
    assert "result contains a NUL character" in WorkflowNode.objects.get(pk=poisoned.pk).error
    assert WorkflowNode.objects.get(pk=after.pk).publish_count == 1


@pytest.mark.django_db(transaction=True)
def test_node_succeeded__a_value_the_database_refuses_fails_that_node_not_the_workflow(monkeypatch):
    """A refusal the checks did not foresee (here: the check is switched off) still costs one node."""
    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL refuses the value once the engine's own check is off")
    monkeypatch.setattr(outcomes, "encode_result", lambda result: (result, None))
    wf = Workflow(name="poison-refused")
    first = wf.add_signature(record.si("first"))
    wf.add_signature(record.si("second"), dependencies=[first])
    _stale_queued(wf, monkeypatch)

    assert outcomes.node_succeeded(wf.pk, first.task_id, "a\x00b") is not None
    first.refresh_from_db()
    wf.refresh_from_db()
    assert first.state == S.FAILURE and "could not be stored" in first.error
    assert wf.state == Workflow.State.FAILURE and wf.engine_errors == 0
