"""What mypy must infer from the public API (``make lint`` checks this file; nothing imports or runs it).

Each ``assert_type`` fails the lint when an annotation of the public API
changes or is lost (an unannotated method would make it ``Any``).
"""

from collections.abc import Callable
from datetime import timedelta
from typing import Any, assert_type

from celery import Signature

from django_dyrygent import conf, signals
from django_dyrygent.models import Workflow, WorkflowNode
from django_dyrygent.querysets import WorkflowQuerySet
from django_dyrygent.workflows import Workflow as CompatWorkflow
from django_dyrygent.workflows import WorkflowNode as CompatNode
from django_dyrygent.workflows import WorkflowResult


def on_finish(workflow: Any, payload: Any) -> None:
    """A celery-dyrygent style hook."""


#: The connect decorators give the handler back with its own type.
hook: Callable[[Any, Any], None] = on_finish


def model_workflow(sig: Signature[Any]) -> None:
    wf = Workflow(name="typed")
    node = wf.add_signature(sig, timeout=timedelta(seconds=5), max_attempts=2)
    assert_type(node, WorkflowNode)
    assert_type(wf.add_celery_canvas(sig, [node]), list[WorkflowNode])
    assert_type(wf.add_fanout(sig, node, timeout=30), WorkflowNode)
    assert_type(wf.link_error(sig), WorkflowNode)
    assert_type(wf.link_finalizer(sig), WorkflowNode)
    assert_type(wf.leaves(), list[WorkflowNode])
    node.add_dependency(wf.add_signature(sig))
    assert_type(wf.apply_async(), Workflow)
    assert_type(wf.start_sent, bool | None)
    assert_type(wf.wait(timeout=5), str)
    assert_type(wf.tick(), str)
    assert_type(wf.cancel(reason="typed"), bool)
    assert_type(wf.retry(), int)
    assert_type(wf.skip([node, 42]), int)
    assert_type(wf.is_final, bool)
    assert_type(wf.progress, float)
    assert_type(wf.duration, timedelta | None)
    assert_type(node.get_result(), Any)
    assert_type(Workflow.objects.active(), WorkflowQuerySet)
    assert_type(Workflow.connect("on_finish")(hook), Callable[[Any, Any], None])


def compat_workflow(sig: Signature[Any]) -> None:
    wf = CompatWorkflow({"queue": "ticks"})
    node = wf.add_signature(sig)
    assert_type(node, CompatNode)
    assert_type(node.id, str)
    assert_type(wf.add_celery_canvas(sig, [node]), list[CompatNode])
    assert_type(wf.nodes, dict[str, CompatNode])
    assert_type(wf.skip_tasks([node.id]), int)
    result = wf.apply_async()
    assert_type(result, WorkflowResult)
    assert_type(result.wait(timeout=5), str)
    assert_type(result.state, str | None)
    assert_type(CompatWorkflow.connect("on_state_change")(hook), Callable[[Any, Any], None])


def settings_and_signals() -> None:
    assert_type(conf.settings.TICK_INTERVAL, float)
    assert_type(conf.settings.MAX_ENGINE_ERRORS, int)
    assert_type(conf.settings.EVENT_LOG, bool)
    assert_type(conf.settings.CELERY_APP, str | None)
    assert_type(signals.connect_compat_handler("on_finish", on_finish), signals.CompatHandler)
