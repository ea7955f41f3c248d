"""Saving a workflow: PostgreSQL's COPY path writes what the ORM path writes, in a fixed number of statements.

``apply_async`` writes nodes and edges with ``COPY … FROM STDIN`` on PostgreSQL
(ids reserved from the sequence first) and with ``bulk_create`` elsewhere.
The rows must be the same either way, two builders at once must never share
an id, and a refusal must leave nothing behind.
"""

import threading
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial

import pytest
from celery import chain, chord, group
from django.core.exceptions import ValidationError
from django.db import connection, connections
from django.db.models.signals import post_init
from django.test.utils import CaptureQueriesContext

from django_dyrygent.build import copywriter
from django_dyrygent.build import save as builder
from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from tests.tasks import add, noop

postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="COPY is PostgreSQL's path")


def varied_workflow(prefix):
    """Every kind of value a node row holds: JSON with escapes, dates, durations, skipped nodes, callbacks."""
    wf = Workflow(name=f"{prefix} varied", custom_payload={"who": "ż\t\\n"})
    first = wf.add_signature(
        add.s(1, 2).set(task_id=f"{prefix}-first", queue="q\\1"),
        timeout=timedelta(days=1, seconds=5, microseconds=7), max_attempts=3,
    )
    first.custom_payload = {"text": "tab\there\nnew line \\ back \"quoted\" ż 😀", "when": date(2026, 1, 2),
                            "amount": Decimal("1.50")}
    leaves = wf.add_celery_canvas(
        chain(
            noop.si("x\ty", {"k": [1, 2.5, None, True]}).set(task_id=f"{prefix}-a"),
            group(noop.si(i, when=datetime(2026, 1, 1, tzinfo=timezone.utc)).set(task_id=f"{prefix}-g{i}")
                  for i in range(3)),
            chord([noop.si(9).set(task_id=f"{prefix}-h")], noop.si().set(task_id=f"{prefix}-body")),
        ),
        dependencies=[first],
    )
    skipped = wf.add_signature(noop.si("skip me").set(task_id=f"{prefix}-skipped"))
    wf.add_signature(noop.si().set(task_id=f"{prefix}-after-skip"), dependencies=[skipped, *leaves],
                     trigger_rule="all_done")
    wf.add_fanout(noop.s().set(task_id=f"{prefix}-tmpl"), leaves[0], timeout=30)
    wf.link_error(noop.si("error").set(task_id=f"{prefix}-on-error"))
    wf.link_finalizer(noop.si("finally").set(task_id=f"{prefix}-finally"))
    wf.draft.skip([skipped])
    return wf


def rows_of(wf, prefix):
    """Node rows in position order and edges by position, with this build's names taken out."""
    fields = [f.attname for f in WorkflowNode._meta.concrete_fields if f.attname not in ("id", "workflow_id")]
    nodes = list(WorkflowNode.objects.filter(workflow=wf).order_by("position").values("id", *fields))
    position = {n.pop("id"): n["position"] for n in nodes}
    for node in nodes:
        # Joins and fan-outs get a fresh uuid4 task id.
        node["task_id"] = "uuid" if node["kind"] in ("join", "map") else node["task_id"].replace(prefix, "P")
        options = node["signature"].get("options", {})
        if "task_id" in options:
            options["task_id"] = options["task_id"].replace(prefix, "P")
        if node["finished_at"]:
            node["finished_at"] = "set"  # the time of each build
    edges = sorted(
        (position[e.node_id], position[e.dependency_id], e.position) for e in WorkflowEdge.objects.filter(workflow=wf)
    )
    events = sorted(
        (position[e.node_id], e.old_state, e.new_state, e.reason) for e in WorkflowEvent.objects.filter(workflow=wf)
    )
    return nodes, edges, events


def saved(prefix, monkeypatch, write):
    with monkeypatch.context() as patch:
        if write == "orm":
            patch.setattr(copywriter, "copy_graph", lambda conn, wf, draft, encoded, *_: builder._bulk_create_graph(
                conn.alias, wf, draft, builder.Models(Workflow, WorkflowNode, WorkflowEdge, WorkflowEvent)))
        elif write == "copy-text":  # the text psycopg2's copy_expert is given
            patch.setattr(copywriter, "copy_rows", partial(copywriter.copy_rows, as_text=True))
        wf = varied_workflow(prefix)
        with CaptureQueriesContext(connection) as ctx:
            wf.apply_async()
    copies = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("COPY")]
    assert len(copies) == (0 if write == "orm" else 2), copies
    return wf


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize("write", ["copy", "copy-text"])
def test_apply_async__copy_writes_the_rows_the_orm_writes(monkeypatch, write):
    by_orm = saved("orm", monkeypatch, "orm")
    by_copy = saved(write, monkeypatch, write)
    orm_rows, copy_rows = rows_of(by_orm, "orm"), rows_of(by_copy, write)
    assert copy_rows == orm_rows
    nodes, edges, events = copy_rows
    assert len(nodes) == len(by_copy._draft.nodes) == 14 and len(edges) == 13
    (skipped,) = [n for n in nodes if n["task_id"] == "P-skipped"]
    assert skipped["state"] == "SKIPPED" and skipped["reason"] == "skipped before start"
    assert events == [(skipped["position"], "PENDING", "SKIPPED", "skipped before start")]
    # The instances the user holds are the saved rows.
    first = WorkflowNode.objects.get(task_id=f"{write}-first")
    assert first.timeout == timedelta(days=1, seconds=5, microseconds=7)
    assert first.custom_payload["text"] == "tab\there\nnew line \\ back \"quoted\" ż 😀"
    assert first.signature["options"]["queue"] == "q\\1"
    assert Workflow.objects.get(pk=by_copy.pk).nodes_total == by_orm.nodes_total


@postgres_only
@pytest.mark.django_db
def test_apply_async__sets_the_saved_ids_on_the_users_nodes():
    wf = Workflow()
    a = wf.add_signature(noop.si().set(task_id="ids-a"))
    (b,) = wf.add_celery_canvas(noop.si().set(task_id="ids-b"), dependencies=[a])
    wf.apply_async()
    assert not a._state.adding and a.pk == WorkflowNode.objects.get(task_id="ids-a").pk
    assert list(WorkflowNode.objects.get(pk=b.pk).dependencies.all()) == [a]


@pytest.mark.django_db
def test_apply_async__statements_do_not_grow_with_the_nodes():
    """10 nodes or 1,000: the same statements (PostgreSQL: 2 COPY; elsewhere bulk batches, see test_query_counts)."""
    def statements(levels, width, tag):
        wf = Workflow(name=tag)
        wf.add_celery_canvas(chain(*[group([noop.si().set(task_id=f"{tag}-{g}-{i}") for i in range(width)])
                                     for g in range(levels)]))
        with CaptureQueriesContext(connection) as ctx:
            wf.apply_async()
        return [q["sql"].split("(")[0].split(" WHERE")[0] for q in ctx.captured_queries
                if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]

    small, large = statements(2, 5, "small"), statements(10, 100, "large")
    if connection.vendor == "postgresql":
        assert small == large, (small, large)
        assert sum(q.startswith("COPY") for q in large) == 2 and len(large) <= 5, large
    assert WorkflowNode.objects.filter(workflow__name="large").count() == 1009


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_apply_async__two_builders_at_once_take_different_ids(monkeypatch):
    """Both reserve their ids before either writes a row: the sequence hands out disjoint ranges."""
    barrier = threading.Barrier(2, timeout=30)
    node_rows = copywriter.node_rows

    def rows_after_both_reserved(model, nodes, encoded=None):
        barrier.wait()
        return node_rows(model, nodes, encoded)

    monkeypatch.setattr(copywriter, "node_rows", rows_after_both_reserved)
    built, errors = {}, []

    def build(tag):
        try:
            wf = Workflow(name=tag)
            wf.add_celery_canvas(chain(*[group([noop.si().set(task_id=f"{tag}-{g}-{i}") for i in range(50)])
                                         for g in range(4)]))
            wf.apply_async()
            built[tag] = wf
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=build, args=(tag,)) for tag in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    ids = {tag: set(WorkflowNode.objects.filter(workflow=wf).values_list("pk", flat=True))
           for tag, wf in built.items()}
    assert len(ids["left"]) == len(ids["right"]) == 203 and not ids["left"] & ids["right"]
    for tag, wf in built.items():
        assert {n.pk for n in wf._draft.nodes} == ids[tag]
        # Every edge joins two nodes of its own workflow.
        assert not WorkflowEdge.objects.filter(workflow=wf).exclude(node__workflow=wf).exists()
        assert not WorkflowEdge.objects.filter(workflow=wf).exclude(dependency__workflow=wf).exists()
        assert WorkflowEdge.objects.filter(workflow=wf).count() == 300  # 3 joins of 50, 3 groups of 50


@pytest.mark.django_db
def test_apply_async__task_id_of_another_workflow_is_refused_and_nothing_is_saved():
    first = Workflow(name="first")
    first.add_signature(noop.si().set(task_id="taken-elsewhere"))
    first.apply_async()
    before = (Workflow.objects.count(), WorkflowNode.objects.count(), WorkflowEdge.objects.count())
    wf = Workflow(name="second")
    a = wf.add_signature(noop.si().set(task_id="free-one"))
    wf.add_signature(noop.si().set(task_id="taken-elsewhere"), dependencies=[a])
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    assert "task id taken-elsewhere" in str(excinfo.value) and "already used by another workflow" in str(excinfo.value)
    assert "free-one" not in str(excinfo.value)
    assert (Workflow.objects.count(), WorkflowNode.objects.count(), WorkflowEdge.objects.count()) == before
    assert wf._state.adding and a.pk is None  # still a draft: fix it and apply again
    wf.draft.nodes[1].task_id = "now-free"
    wf.draft.nodes[1].signature["options"]["task_id"] = "now-free"
    wf.apply_async()
    assert WorkflowNode.objects.filter(workflow=wf).count() == 2


def test_for_draft__makes_the_node_the_constructor_makes():
    wf = Workflow(name="same")
    fields = dict(position=3, task_id="t", task_name="n", signature={"task": "n"}, timeout=timedelta(seconds=2))
    fast, slow = WorkflowNode.for_draft(wf, dict(fields)), WorkflowNode(workflow=wf, **fields)
    assert {k: v for k, v in vars(fast).items() if k != "_state"} == {
        k: v for k, v in vars(slow).items() if k != "_state"}
    assert fast._state.adding and fast._state.db is None and fast.workflow is wf
    assert list(vars(fast)) == list(vars(slow))  # the same order: instances share their key table
    # Mutable defaults are never shared between nodes.
    other = WorkflowNode.for_draft(wf, {"task_id": "u"})
    assert other.custom_payload == {} and other.custom_payload is not fast.custom_payload
    assert other.previous_task_ids is not fast.previous_task_ids


def test_for_draft__post_init_receivers_still_see_every_node():
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(receiver, sender=WorkflowNode)
    try:
        wf = Workflow()
        nodes = wf.add_celery_canvas(group(noop.si(), noop.si()))
    finally:
        post_init.disconnect(receiver, sender=WorkflowNode)
    assert seen == nodes



@pytest.mark.django_db
def test_apply_async__text_that_only_looks_suspect_in_json_is_accepted_and_stored_as_given(settings):
    """The one-encoding check sends escapes and near-cap sizes to the exact checks, which accept these."""
    # An emoji is a surrogate pair in ASCII JSON; a literal backslash-u0000 is not a NUL.
    args = ["😀", "\\u0000 \\ud800"]
    wf = Workflow()
    node = wf.add_signature(add.s(*args).set(task_id="looks-suspect"))
    node.custom_payload = {"note": "\\u0000", "smile": "😀"}
    # 87 bytes of compact JSON for args and kwargs, but well over 100 with spaces, task and options.
    settings.DYRYGENT_MAX_ARGUMENT_BYTES = 100
    wf.add_signature(add.s(*range(25)).set(task_id="just-under"))
    wf.apply_async()
    row = WorkflowNode.objects.get(task_id="looks-suspect")
    assert row.signature["args"] == args and row.custom_payload == {"note": "\\u0000", "smile": "😀"}
    assert WorkflowNode.objects.get(task_id="just-under").signature["args"] == list(range(25))
    settings.DYRYGENT_MAX_ARGUMENT_BYTES = 86
    wf = Workflow()
    wf.add_signature(add.s(*range(25)).set(task_id="now-too-big"))
    with pytest.raises(ValidationError, match="now-too-big.*args and kwargs is 87 bytes"):
        wf.apply_async()


@pytest.mark.parametrize("size", [1, 7, 8192, -1])
def test_lines_reader__gives_psycopg2_every_line_whatever_the_read_size(size):
    rows = [(i, f"text\t{i}\n\\", None, timedelta(seconds=i)) for i in range(500)]
    expected = "".join(copywriter.copy_lines(rows))
    reader = copywriter._LinesReader(copywriter.copy_lines(rows))
    chunks = []
    while chunk := reader.read(size):
        assert size < 0 or len(chunk) <= size
        chunks.append(chunk)
    assert "".join(chunks) == expected
    assert expected.startswith("0\ttext\\t0\\n\\\\\t\\N\t0 days 0 seconds 0 microseconds\n")
