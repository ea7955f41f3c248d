"""Sub-workflows without a worker: the engine driven directly, the child started by ``subworkflows.start``."""

import threading

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_dyrygent import engine, subworkflows
from django_dyrygent.engine import decisions, messaging, outcomes
from django_dyrygent.models import ApiToken, Workflow, WorkflowNode
from django_dyrygent.operations import graph_data, graph_to_dot, graph_to_mermaid
from tests import subflows
from tests.tasks import record

S = WorkflowNode.State
W = Workflow.State


def parent_with(definition, params=None, pass_results=False):
    """first -> sub-workflow -> after, started (nothing published: no worker)."""
    wf = Workflow(name="parent", pass_results=pass_results)
    first = wf.add_signature(record.si("first"))
    sub = wf.add_subworkflow(definition, params, dependencies=[first])
    wf.add_signature(record.s() if pass_results else record.si("after"), dependencies=[sub])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_succeeded(wf.pk, first.task_id, "F")
    sub.refresh_from_db()
    return wf, sub


def run_child(child):
    """Start the child and succeed its tasks in order, each with what its task would return."""
    engine.tick(child.pk, scheduled=False)
    for node in child.nodes.order_by("position"):
        node.refresh_from_db()
        if node.state == S.QUEUED:
            args = node.signature.get("args") or []
            outcomes.node_succeeded(child.pk, node.task_id, sum(args) if node.task_name == "tests.add" else 50)


def running_child():
    """A parent whose sub-workflow node runs a child holding a task (tests.hold)."""
    wf, sub = parent_with(subflows.held, {"flag": "x"})
    subworkflows.start(sub.pk)
    child = Workflow.objects.get(parent_node=sub)
    engine.tick(child.pk, scheduled=False)
    return wf, sub, child


def test_add_subworkflow__refuses_a_lambda_and_bad_params():
    wf = Workflow()
    with pytest.raises(ValidationError, match="module-level function"):
        wf.add_subworkflow(lambda: None)
    with pytest.raises(ValidationError, match="params are a dict"):
        wf.add_subworkflow("tests.add", params=[1])
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        wf.add_subworkflow("tests.add", params={"x": {1, 2}})


@pytest.mark.django_db
def test_subworkflow__child_is_built_when_the_node_is_reached_and_its_result_passed_on():
    wf, sub = parent_with(subflows.adder, {"x": 3}, pass_results=True)
    assert sub.state == S.WAITING and sub.kind == "subworkflow"
    assert not Workflow.objects.filter(parent_node=sub).exists()
    assert subworkflows.start(sub.pk) == "started"
    assert subworkflows.start(sub.pk) == "moot"  # a duplicate message
    child = Workflow.objects.get(parent_node=sub)
    assert str(child.pk) == sub.task_id
    run_child(child)
    child.refresh_from_db()
    assert child.state == W.SUCCESS
    decisions.child_ended(child.pk)
    sub.refresh_from_db()
    assert (sub.state, sub.result) == (S.SUCCESS, 50)
    after = wf.nodes.get(position=2)
    assert after.state == S.QUEUED


@pytest.mark.django_db
def test_subworkflow__a_definition_with_params_and_a_failing_child_fail_the_node_and_parent():
    wf, sub = parent_with("tests.add", {"x": 1, "y": 4})
    assert subworkflows.start(sub.pk) == "started"
    child = Workflow.objects.get(parent_node=sub)
    assert (child.definition, child.parameters) == ("tests.add", {"x": 1, "y": 4, "label": ""})
    engine.tick(child.pk, scheduled=False)
    first = child.nodes.get(position=0)
    outcomes.node_failed(child.pk, first.task_id, ValueError("bad sum"))
    child.refresh_from_db()
    assert child.state == W.FAILURE
    decisions.child_ended(child.pk)
    sub.refresh_from_db()
    wf.refresh_from_db()
    assert sub.state == S.FAILURE and f"sub-workflow {child.pk} ended FAILURE" in sub.error
    assert wf.state == W.FAILURE and "bad sum" in sub.error
    assert wf.nodes.get(position=2).state == S.UPSTREAM_FAILED


@pytest.mark.django_db
def test_subworkflow__what_cannot_start_fails_the_node_with_the_reason(settings):
    wf, sub = parent_with("no.such.definition")
    assert subworkflows.start(sub.pk) == "failed"
    sub.refresh_from_db()
    assert sub.state == S.FAILURE and "No catalogue definition is registered as 'no.such.definition'" in sub.error
    wf2, sub2 = parent_with("tests.add", {"y": 1})
    assert subworkflows.start(sub2.pk) == "failed"
    sub2.refresh_from_db()
    assert "x: This field is required" in sub2.error
    wf3, sub3 = parent_with(subflows.not_a_workflow)
    assert subworkflows.start(sub3.pk) == "failed"
    sub3.refresh_from_db()
    assert "returned 42" in sub3.error
    assert not Workflow.objects.filter(parent_node__in=[sub, sub2, sub3]).exists()


@pytest.mark.django_db
def test_subworkflow__depth_is_capped_with_a_clear_error(settings):
    settings.DYRYGENT_MAX_SUBWORKFLOW_DEPTH = 2
    wf = Workflow(name="top")
    wf.add_subworkflow(subflows.nested, {"level": 1})
    wf.apply_async()
    current = wf
    for _level in range(2):
        engine.tick(current.pk, scheduled=False)
        node = current.nodes.get(kind="subworkflow")
        assert subworkflows.start(node.pk) == "started"
        current = Workflow.objects.get(parent_node=node)
    engine.tick(current.pk, scheduled=False)
    node = current.nodes.get(kind="subworkflow")
    assert subworkflows.start(node.pk) == "failed"
    node.refresh_from_db()
    assert "3 levels deep, over DYRYGENT_MAX_SUBWORKFLOW_DEPTH=2" in node.error
    assert subworkflows.depth(current.pk) == 2


@pytest.mark.django_db
def test_subworkflow__canceling_the_parent_cancels_the_child_and_its_tasks():
    wf, sub, child = running_child()
    assert wf.cancel()
    child.refresh_from_db()
    sub.refresh_from_db()
    assert (sub.state, child.state) == (S.CANCELED, W.CANCELED)
    assert f"parent workflow {wf.pk} ended CANCELED" in child.events.filter(node=None).last().reason
    assert set(child.nodes.values_list("state", flat=True)) == {S.CANCELED}
    decisions.child_ended(child.pk)  # the child's report comes after: nothing changes
    sub.refresh_from_db()
    assert sub.state == S.CANCELED


@pytest.mark.django_db
def test_subworkflow__canceling_the_child_cancels_the_node_and_fails_the_parent_then_retry_starts_a_new_child():
    wf, sub, child = running_child()
    assert child.cancel("no longer needed")
    decisions.child_ended(child.pk)
    sub.refresh_from_db()
    wf.refresh_from_db()
    assert (sub.state, wf.state) == (S.CANCELED, W.FAILURE)
    assert "canceled" in wf.error
    assert wf.retry() == 2
    sub.refresh_from_db()
    assert sub.state == S.WAITING and sub.task_id != str(child.pk)
    assert subworkflows.start(sub.pk) == "started"
    assert Workflow.objects.filter(parent_node=sub).count() == 2


@pytest.mark.django_db
def test_subworkflow__a_lost_start_or_report_is_repaired_by_the_parents_tick(django_capture_on_commit_callbacks):
    wf, sub = parent_with(subflows.adder, {"x": 1})
    # The start message was lost: the tick past the check time sends it again.
    WorkflowNode.objects.filter(pk=sub.pk).update(timeout_at=sub.timeout_at.replace(year=2000))
    with django_capture_on_commit_callbacks() as callbacks:
        engine.tick(wf.pk, scheduled=False)
    assert any(getattr(c, "func", None) is not None and c.func.__name__ == "send_child_starts" for c in callbacks)
    sub.refresh_from_db()
    assert sub.state == S.WAITING and sub.timeout_at.year > 2000
    subworkflows.start(sub.pk)
    child = Workflow.objects.get(parent_node=sub)
    run_child(child)
    # Its end's report was lost too: the next tick past the check time applies it.
    WorkflowNode.objects.filter(pk=sub.pk).update(timeout_at=sub.timeout_at.replace(year=2000))
    engine.tick(wf.pk, scheduled=False)
    sub.refresh_from_db()
    assert (sub.state, sub.result) == (S.SUCCESS, 50)


@pytest.mark.django_db
def test_subworkflow__a_paused_parent_holds_the_start_and_resume_starts_it():
    wf = Workflow(name="paused parent")
    first = wf.add_signature(record.si("first"))
    sub = wf.add_subworkflow(subflows.adder, {"x": 1}, dependencies=[first])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    assert wf.pause()
    outcomes.node_succeeded(wf.pk, first.task_id, "F")
    sub.refresh_from_db()
    assert sub.state == S.PENDING
    assert wf.resume()
    sub.refresh_from_db()
    assert sub.state == S.WAITING


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_subworkflow__child_failing_while_parent_is_canceled_never_deadlocks_and_ends_consistently(monkeypatch):
    """Two threads, released together, twenty rounds: one cancels the parent (locking the child after
    it), one fails the child's task (its end told to the parent after its commit)."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers: nothing runs concurrently")
    for name in ("publish", "revoke", "send_tick", "send_child_starts"):
        monkeypatch.setattr(messaging, name, lambda *args, **kwargs: None)
    for _round in range(20):
        wf, sub, child = running_child()
        task = child.nodes.get(position=0)
        barrier = threading.Barrier(2)
        errors = []

        def run(call, *args, barrier=barrier, errors=errors):
            try:
                barrier.wait(5)
                call(*args)
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=run, args=(engine.cancel, wf.pk, "race")),
                   threading.Thread(target=run, args=(outcomes.node_failed, child.pk, task.task_id, ValueError("x")))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads) and not errors, errors
        state = (Workflow.objects.get(pk=wf.pk).state, WorkflowNode.objects.get(pk=sub.pk).state,
                 Workflow.objects.get(pk=child.pk).state)
        assert state in {(W.CANCELED, S.CANCELED, W.CANCELED), (W.CANCELED, S.CANCELED, W.FAILURE),
                         (W.FAILURE, S.FAILURE, W.FAILURE)}, state


@pytest.mark.django_db
def test_subworkflow__its_own_look_and_links_both_ways_in_admin_status_exports_and_api(admin_client, capsys,
                                                                                        django_user_model):
    wf, sub, child = running_child()
    wf_page = admin_client.get(reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])).content.decode()
    child_url = reverse("admin:django_dyrygent_workflow_change", args=[child.pk])
    node_url = reverse("admin:django_dyrygent_workflownode_change", args=[sub.pk])
    picture = wf_page[wf_page.index('class="dy-dag'):]
    node_svg = picture[picture.index(f'href="{node_url}"'):]
    node_svg = node_svg[:node_svg.index("</a>")]
    assert "dy-subworkflow" in node_svg and 'class="dy-inner"' in node_svg and "sub-workflow" in node_svg
    assert '<span class="dy-swatch dy-subworkflow"></span>sub-workflow' in wf_page
    assert f'<a href="{child_url}">' in wf_page  # the Sub-workflows fieldset (the picture links nodes)
    child_page = admin_client.get(child_url).content.decode()
    assert reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]) in child_page and node_url in child_page
    assert child_url in admin_client.get(node_url).content.decode()

    call_command("dyrygent_status", str(wf.pk))
    out = capsys.readouterr().out
    assert "held (subworkflow)(flag='x')" in out and f"running sub-workflow {child.pk}" in out
    assert f"runs       sub-workflow {child.pk} RUNNING (node {sub.task_id})" in out
    call_command("dyrygent_status", str(child.pk))
    assert f"run by     workflow {wf.pk} (sub-workflow node {sub.task_id})" in capsys.readouterr().out
    data = graph_data(wf)
    assert f'n{sub.pk} [label="tests.subflows.held (subworkflow)\\nWAITING", fillcolor="#9fd8d9", ' \
           'peripheries=2' in graph_to_dot(data)
    assert f'n{sub.pk}[["tests.subflows.held (subworkflow)<br/>WAITING"]]' in graph_to_mermaid(data)

    user = django_user_model.objects.create_user("viewer")
    user.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    _token, key = ApiToken.issue(user, "test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    parent_json = client.get(f"/dyrygent/workflows/{wf.pk}/").json()
    assert parent_json["subworkflows"] == [{"id": str(child.pk), "state": "RUNNING", "node": sub.task_id}]
    assert parent_json["parent_workflow"] is None
    child_json = client.get(f"/dyrygent/workflows/{child.pk}/").json()
    assert (child_json["parent_workflow"], child_json["parent_node"]) == (str(wf.pk), sub.task_id)
    nodes = client.get(f"/dyrygent/workflows/{wf.pk}/nodes/").json()["results"]
    assert [(n["kind"], n["subworkflow"]) for n in nodes] == [
        ("task", None), ("subworkflow", str(child.pk)), ("task", None)]


@pytest.mark.django_db
def test_subworkflow__a_child_ending_while_its_parent_is_paused_is_recorded_and_resume_runs_on():
    wf, sub, child = running_child()
    assert wf.pause()
    for node in child.nodes.order_by("position"):
        engine.tick(child.pk, scheduled=False)
        outcomes.node_succeeded(child.pk, node.task_id, node.signature["args"][0])
    child.refresh_from_db()
    assert child.state == W.SUCCESS
    decisions.child_ended(child.pk)
    sub.refresh_from_db()
    after = wf.nodes.get(position=2)
    assert (sub.state, sub.result, after.state) == (S.SUCCESS, "x", S.PENDING)
    assert wf.resume()
    after.refresh_from_db()
    assert after.state == S.QUEUED


@pytest.mark.django_db
def test_subworkflow__the_api_list_reads_families_and_waits_in_queries_that_do_not_grow_with_the_page(
        django_user_model):
    user = django_user_model.objects.create_user("lister")
    user.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    _token, key = ApiToken.issue(user, "test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")

    def listed():
        with CaptureQueriesContext(connection) as queries:
            runs = client.get("/dyrygent/workflows/?limit=50").json()["results"]
        return runs, len(queries)

    running_child()
    listed()  # the token's first use and the permission cache are read once
    _runs, one_family = listed()
    for _ in range(3):
        running_child()
    runs, four_families = listed()
    assert len(runs) == 8 and four_families == one_family
    by_id = {run["id"]: run for run in runs}
    children = [run for run in runs if run["parent_workflow"]]
    assert len(children) == 4
    for child in children:
        parent = by_id[child["parent_workflow"]]
        assert parent["subworkflows"] == [{"id": child["id"], "state": "RUNNING", "node": child["parent_node"]}]
