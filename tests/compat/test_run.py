"""celery-dyrygent users' code on a real worker, through django_dyrygent.workflows.

The README's examples and the six scenarios of celery-dyrygent's integration
suite (return value, single task, group, chord, chain, combination), written
again here against this import path; then each difference the compatible
door decides (hooks, options, skip_tasks, link/link_error, ERROR).
"""

import time

import celery
import pytest
from celery import chain, group

from django_dyrygent import engine, models
from django_dyrygent.workflows import Workflow, WorkflowException, WorkflowResult
from tests.celery_app import app as celery_app
from tests.conftest import wait_for
from tests.models import Execution
from tests.tasks import fail, record, request_info, sleep

pytestmark = pytest.mark.worker

TIMEOUT = 30


def labels():
    return list(Execution.objects.values_list("label", flat=True))


def run_canvas(canvas):
    """celery-dyrygent's integration helper: build, apply, wait on the returned result."""
    workflow = Workflow()
    workflow.add_celery_canvas(canvas)
    result = workflow.apply_async()
    result.wait(timeout=TIMEOUT)
    return workflow


# -- the README, as written -----------------------------------------------------------------------


def test_readme__examples_run_unchanged_but_for_the_import(worker, capsys):
    from django_dyrygent.tasks import register_workflow_processor

    app = celery_app  # your celery application instance
    workflow_processor = register_workflow_processor(app)
    assert workflow_processor.name == "django_dyrygent.tick"

    canvas = celery.chain(record.si("r1"), record.si("r2")) | celery.chord(
        [record.si("r3"), record.si("r4")], record.si("r5")
    )
    wf = Workflow()
    wf.add_celery_canvas(canvas)

    @Workflow.connect("on_state_change")
    def handle_state_change(workflow, payload):
        print("Workflow {} has new state {}".format(workflow.id, payload))  # noqa: UP032 - as written

    try:
        result = wf.apply_async()
        assert result.wait(timeout=TIMEOUT) == "SUCCESS"
    finally:
        from django_dyrygent.signals import disconnect_compat_handler

        disconnect_compat_handler("on_state_change", handle_state_change)
    seq = labels()
    assert seq[:2] == ["r1", "r2"] and sorted(seq[2:4]) == ["r3", "r4"] and seq[4] == "r5"
    out = capsys.readouterr().out
    assert f"Workflow {wf.id} has new state RUNNING" in out
    assert f"Workflow {wf.id} has new state SUCCESS" in out

    task_list = [{"label": "p1", "user_id": 1}, {"label": "p2", "user_id": 2}]

    def create_celery_task(task):
        return record.si(task["label"])

    wf = Workflow()
    for task in task_list:
        sig = create_celery_task(task)
        sig.freeze()
        node = wf.add_signature(sig)
        node.custom_payload["user_id"] = task["user_id"]
    wf.apply_async().wait(timeout=TIMEOUT)
    rows = models.WorkflowNode.objects.filter(workflow_id=wf.id)
    payloads = {n.signature["args"][0]: n.custom_payload for n in rows}
    assert payloads == {"p1": {"user_id": 1}, "p2": {"user_id": 2}}

    wf = Workflow(options={"priority": 10})
    wf.add_celery_canvas(chain(request_info.si(), request_info.si()))
    wf.apply_async(options={"priority": 8}).wait(timeout=TIMEOUT)
    row = models.Workflow.objects.get(pk=wf.id)
    assert row.state == "SUCCESS" and (row.options, row.tasks_options) == ({"priority": 10}, {"priority": 8})
    assert [n.result["priority"] for n in row.nodes.all()] == [8, 8]


# -- celery-dyrygent's integration scenarios ----------------------------------------------------------


def test_integration__return_value_task_id_is_the_first_node_key(worker):
    workflow = Workflow()
    workflow.add_celery_canvas(record.s("return-value"))
    workflow.apply_async().wait(timeout=TIMEOUT)
    task_id = list(workflow.nodes.keys())[0]  # noqa: RUF015 - the peer's test, as written
    assert Execution.objects.get(label="return-value").task_id == task_id


def test_integration__single_task(worker):
    run_canvas(record.s("task1"))
    assert labels() == ["task1"]


def test_integration__group(worker):
    run_canvas(celery.group([record.s(f"task{n}") for n in range(1, 6)]))
    assert set(labels()) == {"task1", "task2", "task3", "task4", "task5"}


def test_integration__chord(worker):
    run_canvas(celery.chord([record.s(f"task{n}") for n in range(1, 6)], record.s("last")))
    assert labels()[-1] == "last" and len(labels()) == 6


def test_integration__chain(worker):
    run_canvas(celery.chain(record.s("task1"), record.s("task2"), record.s("task3")))
    assert labels() == ["task1", "task2", "task3"]


def test_integration__combination(worker):
    canvas = (
        celery.group(record.s("task1a"), record.s("task1b"))
        | record.s("task2")
        | record.s("task3")
        | celery.group(record.s("task4a"), record.s("task4b"))
        | record.s("task5")
    )
    run_canvas(canvas)
    order = labels()
    assert set(order[:2]) == {"task1a", "task1b"}
    assert order[2:4] == ["task2", "task3"]
    assert set(order[4:6]) == {"task4a", "task4b"}
    assert order[6] == "task5"


# -- hooks ---------------------------------------------------------------------------------------------


def test_hooks__on_finish_runs_before_the_final_state_change_and_get_the_peers_view(worker, hooks):
    connect, calls = hooks
    for name in ("on_state_change", "on_finish", "after_active_tick"):
        connect(name)
    wf = Workflow()
    wf.add_celery_canvas(chain(record.si("h1").set(task_id="hook-1"), record.si("h2").set(task_id="hook-2")))
    assert wf.apply_async().wait(timeout=TIMEOUT) == "SUCCESS"
    wait_for(lambda: any(c[0] == "on_state_change" and c[2] == "SUCCESS" for c in calls), "final hook")
    names = [(n, p) for n, _w, p in calls if n != "after_active_tick"]
    assert names == [("on_state_change", "RUNNING"), ("on_finish", None), ("on_state_change", "SUCCESS")]
    assert [p for n, _w, p in calls if n == "after_active_tick"] == [None, None]
    view = calls[-1][1]
    assert isinstance(view, Workflow) and view.id == wf.id and isinstance(view.id, str)
    assert list(view.nodes.keys()) == ["hook-1", "hook-2"]
    assert view.nodes["hook-2"].dependencies == {"hook-1": None}
    assert view.state == "SUCCESS" and view.is_success()


def test_hooks__error_gets_no_on_finish_and_the_result_raises(worker, hooks):
    connect, calls = hooks
    connect("on_state_change")
    connect("on_finish")
    wf = Workflow()
    wf.add_signature(sleep.si(3))
    wf.set_max_processing_time(0.2)
    result = wf.apply_async()
    wait_for(lambda: models.Workflow.objects.filter(pk=wf.id, state="RUNNING").exists(), "start")
    time.sleep(0.3)
    engine.tick(wf.id, scheduled=False)  # the deadline is enforced by the tick
    with pytest.raises(WorkflowException, match="ended ERROR"):
        result.wait(timeout=TIMEOUT)
    assert result.get(timeout=TIMEOUT, propagate=False) == "ERROR"
    wait_for(lambda: any(p == "ERROR" for _n, _w, p in calls), "ERROR hook")
    assert [(n, p) for n, _w, p in calls] == [("on_state_change", "RUNNING"), ("on_state_change", "ERROR")]


def test_hooks__a_failing_handler_is_logged_and_the_workflow_runs_on(worker, hooks, caplog):
    def broken(workflow, payload):
        raise RuntimeError("handler bug")

    Workflow.connect("on_state_change")(broken)
    try:
        wf = Workflow()
        wf.add_signature(record.si("after-broken-hook"))
        assert wf.apply_async().wait(timeout=TIMEOUT) == "SUCCESS"
    finally:
        from django_dyrygent.signals import disconnect_compat_handler

        disconnect_compat_handler("on_state_change", broken)
    wait_for(lambda: any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records),
             "logged hook failure")


# -- options, skip_tasks, link / link_error on a worker -----------------------------------------------


def test_apply_async_options__override_the_signatures_own_on_the_worker(worker):
    wf = Workflow()
    node = wf.add_signature(request_info.si().set(priority=1))
    assert wf.apply_async(options={"priority": 7}).wait(timeout=TIMEOUT) == "SUCCESS"
    assert models.WorkflowNode.objects.get(task_id=node.id).result["priority"] == 7


def test_skip_tasks__skipped_tasks_never_run_and_their_followers_do(worker):
    wf = Workflow()
    wf.add_celery_canvas(chain(record.si("s1").set(task_id="skip-1"), record.si("s2"), record.si("s3")))
    wf.skip_tasks(["skip-1"])
    assert wf.apply_async().wait(timeout=TIMEOUT) == "SUCCESS"
    assert labels() == ["s2", "s3"]
    assert models.WorkflowNode.objects.get(task_id="skip-1").state == "SKIPPED"


def test_link_and_link_error__run_as_nodes_of_the_workflow(worker):
    ok = record.si("ok")
    ok.link(record.si("on-ok"))
    bad = fail.si("bad")
    bad.link_error(record.si("on-error"))
    bad.link(record.si("never"))
    wf = Workflow()
    wf.add_celery_canvas(group(ok, bad))
    result = wf.apply_async()
    assert isinstance(result, WorkflowResult)
    assert result.wait(timeout=TIMEOUT) == "FAILURE"  # as the peer's processor: FAILURE does not raise
    assert sorted(labels()) == ["fail:bad", "ok", "on-error", "on-ok"]
    rows = models.WorkflowNode.objects.filter(workflow_id=wf.id)
    states = {n.signature["args"][0]: n.state for n in rows}
    assert states["never"] == "UPSTREAM_FAILED" and states["on-error"] == "SUCCESS"
