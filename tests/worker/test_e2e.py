"""End-to-end: workflows on a real in-process Celery worker and the real broker.

Every test here goes through the whole path a user's workflow takes: build,
one-transaction save, the first tick through the broker, publication of
nodes, worker signals reporting back to the engine, and the final state.
"""

import pytest
from celery import chain, chord, group
from celery import signals as celery_signals

from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from tests.celery_app import app as celery_app
from tests.models import Execution
from tests.tasks import big, fail, flaky, noop, not_json, not_json_quiet, quiet, record, request_info

pytestmark = pytest.mark.worker

TIMEOUT = 30
S = WorkflowNode.State


def run(wf, timeout=TIMEOUT, options=None):
    wf.apply_async(options=options)
    return wf.wait(timeout=timeout)


def labels():
    return list(Execution.objects.values_list("label", flat=True))


def by_label(wf):
    """Task nodes of the workflow keyed by their first argument (the record label)."""
    return {
        (n.signature.get("args") or [n.task_name])[0]: n
        for n in wf.nodes.filter(kind=WorkflowNode.Kind.TASK)
    }


def assert_dependency_order(wf):
    """Every node started (a join: completed) only after each of its dependencies finished."""
    nodes = {n.pk: n for n in wf.nodes.all()}
    edges = list(WorkflowEdge.objects.filter(workflow=wf).values_list("node_id", "dependency_id"))
    assert edges, "the workflow has no edges: nothing to check"
    for node_id, dep_id in edges:
        node, dep = nodes[node_id], nodes[dep_id]
        began = node.started_at if node.kind == WorkflowNode.Kind.TASK else node.finished_at
        assert dep.finished_at is not None, f"{dep} never finished"
        assert began is not None, f"{node} never started"
        assert began >= dep.finished_at, (
            f"{node} began at {began}, before {dep} finished at {dep.finished_at}"
        )


def assert_before(seq, first, then):
    assert seq.index(first) < seq.index(then), f"{first} ran after {then}: {seq}"


# -- canvas shapes ---------------------------------------------------------------------


def test_chain__runs_steps_one_after_another(worker):
    wf = Workflow(name="chain")
    wf.add_celery_canvas(chain(record.si("a"), record.si("b"), record.si("c"), record.si("d")))
    assert run(wf) == Workflow.State.SUCCESS
    assert labels() == ["a", "b", "c", "d"]
    assert_dependency_order(wf)


def test_group__runs_every_member(worker):
    wf = Workflow(name="group")
    wf.add_celery_canvas(group(record.si(f"g{i}") for i in range(6)))
    assert run(wf) == Workflow.State.SUCCESS
    assert sorted(labels()) == [f"g{i}" for i in range(6)]
    assert wf.nodes_succeeded == wf.nodes_total == 6


def test_chord__body_waits_for_whole_header(worker):
    wf = Workflow(name="chord")
    header = [record.si("h1"), record.si("h2", sleep=0.3), record.si("h3")]
    wf.add_celery_canvas(chord(header, record.si("body")))
    assert run(wf) == Workflow.State.SUCCESS
    seq = labels()
    assert seq[-1] == "body" and sorted(seq[:3]) == ["h1", "h2", "h3"]
    assert_dependency_order(wf)


def test_nested_canvas__chain_of_groups_chords_and_chains_runs_in_dependency_order(worker):
    wf = Workflow(name="nested")
    wf.add_celery_canvas(
        chain(
            record.si("start"),
            group(chain(record.si("b1"), record.si("b2", sleep=0.2)), record.si("c")),
            chord([record.si("d1"), chain(record.si("d2"), record.si("d3"))], record.si("e")),
            group(record.si("f1"), record.si("f2")),
        )
    )
    node = wf.add_signature(record.si("after-leaves"), dependencies=wf.leaves())
    assert node.task_id
    assert run(wf) == Workflow.State.SUCCESS
    seq = labels()
    assert sorted(seq) == sorted(
        ["start", "b1", "b2", "c", "d1", "d2", "d3", "e", "f1", "f2", "after-leaves"]
    )
    assert seq[0] == "start" and seq[-1] == "after-leaves"
    for first, then in [("b1", "b2"), ("b2", "d1"), ("c", "d2"), ("d2", "d3"), ("d3", "e"), ("d1", "e"),
                        ("e", "f1"), ("e", "f2")]:
        assert_before(seq, first, then)
    assert_dependency_order(wf)
    assert wf.nodes_total == wf.nodes_succeeded == 11


# -- failures --------------------------------------------------------------------------


def test_failure__marks_descendants_upstream_failed_while_independent_branch_succeeds(worker):
    wf = Workflow(name="failure")
    wf.add_celery_canvas(
        group(
            chain(record.si("a"), fail.si("kaput"), record.si("b"), record.si("c")),
            chain(record.si("x", sleep=0.3), record.si("y")),
        )
    )
    assert run(wf) == Workflow.State.FAILURE
    nodes = by_label(wf)
    assert nodes["kaput"].state == S.FAILURE
    assert {nodes["b"].state, nodes["c"].state} == {S.UPSTREAM_FAILED}
    assert nodes["a"].state == nodes["x"].state == nodes["y"].state == S.SUCCESS
    assert "b" not in labels() and "c" not in labels() and "y" in labels()
    error = nodes["kaput"].error
    assert "Boom: kaput" in error and "Traceback (most recent call last)" in error
    assert "raise Boom(message)" in error
    wf.refresh_from_db()
    assert (wf.nodes_done, wf.nodes_failed, wf.nodes_succeeded) == (6, 3, 3)


# -- payloads and options ----------------------------------------------------------------


def test_options__task_options_and_custom_payloads_are_kept_and_reach_the_worker(worker):
    published = []

    def on_publish(sender=None, headers=None, properties=None, **kwargs):
        published.append((sender, (properties or {}).get("priority"), dict(headers or {})))

    celery_signals.before_task_publish.connect(on_publish, weak=False)
    try:
        wf = Workflow(name="options", options={"priority": 3}, custom_payload={"user_id": 7})
        node = wf.add_signature(request_info.si())
        node.custom_payload["channel"] = "ops"
        own = wf.add_signature(request_info.si().set(priority=1), dependencies=[node])
        assert run(wf, options={"priority": 5, "headers": {"x_tag": "t1"}}) == Workflow.State.SUCCESS
    finally:
        celery_signals.before_task_publish.disconnect(on_publish)
    wf = Workflow.objects.get(pk=wf.pk)
    assert wf.custom_payload == {"user_id": 7}
    assert wf.tasks_options == {"priority": 5, "headers": {"x_tag": "t1"}}
    node, own = WorkflowNode.objects.get(pk=node.pk), WorkflowNode.objects.get(pk=own.pk)
    assert node.custom_payload == {"channel": "ops"}
    assert node.result == {
        "x_tag": "t1", "priority": 5, "routing_key": celery_app.conf.task_default_queue,
        "workflow": str(wf.pk),
    }
    # The signature's own option wins over the workflow-wide one; the rest still applies.
    assert own.result["priority"] == 1 and own.result["x_tag"] == "t1"
    ticks = [p for p in published if p[0] == "django_dyrygent.tick"]
    assert ticks and all(priority == 3 for _name, priority, _headers in ticks)


# -- Celery features inside a workflow ---------------------------------------------------------


def test_celery_retry__node_passes_through_retry_and_ends_success(worker):
    wf = Workflow(name="flaky")
    node = wf.add_signature(flaky.si("flaky", failures=2))
    wf.add_signature(record.si("after"), dependencies=[node])
    assert run(wf) == Workflow.State.SUCCESS
    node.refresh_from_db()
    assert node.state == S.SUCCESS and node.result == 2 and node.retries == 2
    states = list(WorkflowEvent.objects.filter(node=node).values_list("new_state", flat=True))
    assert states.count(S.RETRY) == 2 and states[-1] == S.SUCCESS
    assert labels() == ["flaky", "after"]


def test_result_cap__oversized_result_fails_node_naming_the_setting(worker, settings):
    settings.DYRYGENT_MAX_RESULT_BYTES = 1000
    wf = Workflow(name="big")
    small = wf.add_signature(big.si(10))
    large = wf.add_signature(big.si(5000))
    wf.add_signature(noop.si(), dependencies=[large])
    assert run(wf) == Workflow.State.FAILURE
    small.refresh_from_db(), large.refresh_from_db()
    assert small.state == S.SUCCESS and small.result == "x" * 10
    assert large.state == S.FAILURE and large.result is None
    assert "DYRYGENT_MAX_RESULT_BYTES=1000" in large.error
    assert wf.nodes.get(task_name="tests.noop").state == S.UPSTREAM_FAILED


@pytest.mark.parametrize("store", [False, True])
def test_result_cap__result_that_is_not_json_fails_the_node(worker, settings, store):
    settings.DYRYGENT_STORE_NODE_RESULTS = store
    wf = Workflow(name="not-json")
    # Stored by the JSON result backend when Celery stores node results: Celery itself fails
    # the task (EncodeError); by default Celery stores nothing and the engine finds it.
    stored = wf.add_signature(not_json.si())
    # No result-backend row whatever the setting (the task ignores its result).
    unstored = wf.add_signature(not_json_quiet.si())
    assert run(wf) == Workflow.State.FAILURE
    stored.refresh_from_db(), unstored.refresh_from_db()
    assert stored.state == S.FAILURE and stored.result is None
    if store:
        assert "EncodeError" in stored.error and "not JSON serializable" in stored.error
    else:
        assert "Result is not JSON-serialisable" in stored.error and "object" in stored.error
    assert unstored.state == S.FAILURE and unstored.result is None
    assert "Result is not JSON-serialisable" in unstored.error and "set" in unstored.error


# -- scale and waiting ---------------------------------------------------------------------


@pytest.mark.large
def test_large_workflow__ten_chained_groups_of_one_hundred_succeed(worker):
    wf = Workflow(name="large")
    wf.add_celery_canvas(chain(*[group(quiet.si() for _ in range(100)) for _ in range(10)]))
    wf.apply_async()
    assert wf.wait(timeout=240) == Workflow.State.SUCCESS
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (1000, 1000, 1000, 0)
    assert wf.nodes.filter(kind=WorkflowNode.Kind.TASK).exclude(state=S.SUCCESS).count() == 0
    # Joins keep edges linear: 100 in + 100 out per hop, not 100 x 100.
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 9 * 200
    assert_dependency_order(wf)


def test_wait__raises_timeout_error_while_running(worker):
    wf = Workflow(name="slow")
    wf.add_signature(record.si("slow", sleep=1.5))
    wf.apply_async()
    with pytest.raises(TimeoutError, match=str(wf.pk)):
        wf.wait(timeout=0.2)
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
