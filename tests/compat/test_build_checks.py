"""What apply_async refuses or reports before anything runs, in both doors.

Poison text (NUL, lone surrogates), size caps, the task registry check, and a
start that could not reach the broker. Every refusal names the node and the
field, and leaves the four tables as they were.
"""

import logging
import socket
import sys
from pathlib import Path

import pytest
from celery import Celery
from celery.canvas import Signature
from django.core.exceptions import ValidationError

from django_dyrygent import engine, models
from django_dyrygent.workflows import Workflow as CompatWorkflow
from django_dyrygent.workflows import WorkflowException
from tests.celery_app import app as celery_app
from tests.tasks import add, noop

pytestmark = pytest.mark.django_db

PACKAGE = Path(models.__file__).parent


def row_counts():
    return tuple(m.objects.count() for m in (models.Workflow, models.WorkflowNode, models.WorkflowEdge,
                                             models.WorkflowEvent))


@pytest.fixture
def nothing_saved():
    before = row_counts()
    yield
    assert row_counts() == before


def text(excinfo):
    return " | ".join(excinfo.value.messages)


# -- the draft owns the graph (the import rules: tests/unit/test_layering.py) -----------------------------


def test_models__stash_no_draft_state_in_instance_dicts():
    source = (PACKAGE / "models.py").read_text() + (PACKAGE / "canvas.py").read_text()
    for stash in ("__dict__", "_draft_nodes", "_draft_dependencies", "_draft_workflow", "_draft_deps"):
        assert stash not in source
    wf = models.Workflow()
    a = wf.add_signature(noop.si())
    b = wf.add_signature(noop.si(), dependencies=[a])
    assert wf.draft.nodes == [a, b] and wf.draft.dependencies_of(b) == [a]
    assert not {k for k in vars(a) | vars(b) if "draft" in k}


# -- NUL bytes and lone surrogates ------------------------------------------------------------------


@pytest.mark.parametrize("make, field", [
    (lambda wf: wf.add_signature(add.s("a\x00b", 1).set(task_id="nul-args")), "args[0]"),
    (lambda wf: wf.add_signature(add.s(1, y="\ud800").set(task_id="nul-args")), "kwargs['y']"),
    (lambda wf: wf.add_signature(noop.si().set(task_id="nul-args", headers={"k": "x\x00"})),
     "options['headers']['k']"),
    (lambda wf: wf.add_signature(noop.si().set(task_id="nul-args")).custom_payload.update(note="\x00"),
     "custom_payload['note']"),
    (lambda wf: wf.add_signature(noop.si().set(task_id="nul-args\x00")), "task_id"),
], ids=["args-nul", "kwargs-surrogate", "options-nul", "node-payload-nul", "task-id-nul"])
def test_apply_async__poison_text_names_the_node_and_field(nothing_saved, make, field):
    wf = models.Workflow()
    make(wf)
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    message = text(excinfo)
    assert "nul-args" in message and field in message, message
    assert "NUL" in message or "surrogate" in message


@pytest.mark.parametrize("fields, field", [
    ({"name": "bad\x00name"}, "name"),
    ({"custom_payload": {"\udcff": 1}}, "custom_payload key"),
    ({"options": {"queue": "q\x00"}}, "options['queue']"),
])
def test_apply_async__poison_text_in_the_workflow_names_the_field(nothing_saved, fields, field):
    wf = models.Workflow(**fields)
    wf.add_signature(noop.si())
    with pytest.raises(ValidationError, match="Workflow") as excinfo:
        wf.apply_async()
    assert field in text(excinfo)


def test_apply_async__poison_text_through_the_compat_door_is_a_workflow_exception(nothing_saved):
    wf = CompatWorkflow()
    wf.add_signature(add.s("\x00", 1).set(task_id="compat-nul"))
    with pytest.raises(WorkflowException, match="compat-nul.*args\\[0\\] contains a NUL"):
        wf.apply_async()


# -- size caps ----------------------------------------------------------------------------------------


def test_apply_async__payload_over_the_cap_names_cap_and_node(nothing_saved, settings):
    settings.DYRYGENT_MAX_PAYLOAD_BYTES = 100
    wf = models.Workflow(custom_payload={"blob": "x" * 200})
    node = wf.add_signature(noop.si().set(task_id="big-payload"))
    node.custom_payload["blob"] = "y" * 200
    wf.add_signature(noop.si().set(task_id="small-payload")).custom_payload["ok"] = 1
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    messages = excinfo.value.messages
    assert len(messages) == 2
    assert all("DYRYGENT_MAX_PAYLOAD_BYTES=100" in m for m in messages)
    assert messages[0].startswith("Workflow: custom_payload is 2")
    assert "big-payload" in messages[1] and "small-payload" not in " ".join(messages)


def test_apply_async__arguments_over_the_cap_name_cap_and_node(nothing_saved, settings):
    settings.DYRYGENT_MAX_ARGUMENT_BYTES = 100
    wf = CompatWorkflow()
    wf.add_signature(add.s("z" * 60, y="z" * 60).set(task_id="big-args"))
    wf.add_signature(add.s(1, 2).set(task_id="small-args"))
    with pytest.raises(WorkflowException) as excinfo:
        wf.apply_async()
    (message,) = excinfo.value.messages
    assert "big-args" in message and "args and kwargs" in message
    assert "DYRYGENT_MAX_ARGUMENT_BYTES=100" in message


def test_apply_async__default_caps_are_one_mebibyte_and_zero_disables(settings):
    wf = models.Workflow()
    wf.add_signature(add.s("x" * (1024 * 1024), 1).set(task_id="mib-args"))
    with pytest.raises(ValidationError, match="MAX_ARGUMENT_BYTES=1048576"):
        wf.apply_async()
    settings.DYRYGENT_MAX_ARGUMENT_BYTES = 0
    wf.apply_async()
    assert models.WorkflowNode.objects.filter(task_id="mib-args").exists()


# -- task names against the registry -------------------------------------------------------------------


REGISTRY_APP = None


@pytest.fixture
def registry(monkeypatch, settings):
    """A fresh, not yet finalized Celery app whose registry counts as complete (a worker) or not."""
    app = Celery("registry", set_as_current=False)
    monkeypatch.setattr(sys.modules[__name__], "REGISTRY_APP", app)
    settings.DYRYGENT_CELERY_APP = f"{__name__}.REGISTRY_APP"

    def set_complete(complete):
        app.loader.worker_initialized = complete

    return set_complete


def build_with_unknown_task():
    wf = models.Workflow(name="registry")
    wf.add_signature(noop.si().set(task_id="registered-task"))
    wf.add_signature(Signature("tests.no_such_task").set(task_id="unknown-task"))
    return wf


def test_task_names__complete_registry_warns_by_default_and_saves(registry, caplog):
    registry(True)
    wf = build_with_unknown_task()
    with caplog.at_level(logging.WARNING, logger="django_dyrygent.builder"):
        wf.apply_async()
    assert models.Workflow.objects.filter(pk=wf.pk).exists()
    (record,) = [r for r in caplog.records if r.name == "django_dyrygent.builder"]
    assert "'tests.no_such_task' is not registered in the Celery app 'registry'" in record.getMessage()
    assert "unknown-task" in record.getMessage() and "registered-task" not in record.getMessage()


def test_task_names__complete_registry_refuses_when_asked(registry, settings, nothing_saved):
    settings.DYRYGENT_UNKNOWN_TASKS = "refuse"
    registry(True)
    with pytest.raises(ValidationError) as excinfo:
        build_with_unknown_task().apply_async()
    (message,) = excinfo.value.messages
    assert "unknown-task" in message and "'tests.no_such_task' is not registered" in message


def test_task_names__incomplete_registry_never_refuses(registry, settings, caplog):
    """A web process knows only the tasks it imported: a worker-only task module is fine."""
    settings.DYRYGENT_UNKNOWN_TASKS = "refuse"
    registry(False)
    wf = build_with_unknown_task()
    wf.apply_async()
    assert models.Workflow.objects.filter(pk=wf.pk).exists()
    assert not [r for r in caplog.records if r.name == "django_dyrygent.builder"]


def test_task_names__bad_setting_value_is_check_e002(settings):
    from django_dyrygent.checks import check_settings

    settings.DYRYGENT_UNKNOWN_TASKS = "sometimes"
    errors = [e for e in check_settings(None) if e.id == "django_dyrygent.E002"]
    assert errors and "'warn', 'refuse', 'ignore'" in errors[0].msg


# -- a start the broker did not take -------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


UNREACHABLE = Celery("unreachable", set_as_current=False)


@pytest.fixture
def unreachable_broker(monkeypatch):
    """The current Celery app's broker is a port nobody listens on (bound, then closed)."""
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads it before its own setting
    UNREACHABLE.conf.update(
        broker_url=url,
        broker_connection_timeout=1, broker_connection_retry=False, broker_connection_max_retries=0,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1,
                                   "interval_max": 0.1},
    )
    UNREACHABLE.set_current()
    try:
        yield UNREACHABLE
    finally:
        celery_app.set_current()


def test_apply_async__broker_down_keeps_the_rows_and_tells_the_caller(
    unreachable_broker, django_capture_on_commit_callbacks, caplog
):
    wf = models.Workflow(name="broker-down")
    wf.add_signature(noop.si())
    with django_capture_on_commit_callbacks(execute=True):
        assert wf.apply_async() is wf
        assert wf.start_sent is None  # decided when the transaction commits
    assert wf.start_sent is False and wf.start_error is not None
    # Started in this process; the root the broker refused is marked unpublished (queued_at NULL).
    assert models.Workflow.objects.get(pk=wf.pk).state == "RUNNING"
    (node,) = models.WorkflowNode.objects.filter(workflow=wf)
    assert node.state == "QUEUED" and node.queued_at is None
    assert any("Could not send the start of workflow" in r.getMessage() for r in caplog.records)

    compat = CompatWorkflow()
    compat.add_signature(noop.si())
    with django_capture_on_commit_callbacks(execute=True):
        result = compat.apply_async()
    assert result.start_sent is False and result.start_error is not None

    # What the sweeper does once the broker is back: the unpublished root is published again.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        engine.tick(wf.pk, scheduled=True)
    node.refresh_from_db()
    assert node.state == "QUEUED" and node.queued_at is not None and callbacks
