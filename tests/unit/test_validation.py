"""Bad input is refused with a ValidationError that names the culprit, and nothing is saved.

A half-saved workflow would either hang forever or run part of a graph the
user never meant to run, so every refusal is checked against the row counts
of all four tables as well as against its message.
"""

import math

import pytest
from celery import chain, chord, group
from django.core.exceptions import ValidationError

from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from tests.tasks import add, noop

pytestmark = pytest.mark.django_db


def row_counts():
    return tuple(m.objects.count() for m in (Workflow, WorkflowNode, WorkflowEdge, WorkflowEvent))


def messages(excinfo):
    return " | ".join(excinfo.value.messages)


@pytest.fixture
def no_rows_written():
    """Assert the test leaves the four tables as it found them."""
    before = row_counts()
    yield
    assert row_counts() == before


@pytest.fixture
def empty_tables(no_rows_written):
    assert row_counts() == (0, 0, 0, 0)


def test_apply_async__dependency_cycle_names_the_nodes_of_the_cycle(empty_tables):
    wf = Workflow(name="cyclic")
    a = wf.add_signature(noop.si("a").set(task_id="cycle-a"))
    b = wf.add_signature(noop.si("b").set(task_id="cycle-b"), dependencies=[a])
    c = wf.add_signature(noop.si("c").set(task_id="cycle-c"), dependencies=[b])
    wf.add_signature(noop.si("outside").set(task_id="cycle-outside"))
    a.add_dependency(c)
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    text = messages(excinfo)
    assert "cycle" in text.lower()
    assert all(tid in text for tid in ("cycle-a", "cycle-b", "cycle-c"))
    assert "cycle-outside" not in text
    assert wf._state.adding  # still an unsaved draft


def test_apply_async__self_dependency_is_a_cycle(empty_tables):
    wf = Workflow()
    a = wf.add_signature(noop.si("a").set(task_id="self-dep"))
    a.add_dependency(a)
    with pytest.raises(ValidationError, match="self-dep") as excinfo:
        wf.apply_async()
    assert "cycle" in messages(excinfo).lower()


def test_apply_async__duplicate_task_id_in_one_workflow_names_both_nodes(empty_tables):
    wf = Workflow()
    wf.add_signature(add.s(1, 2).set(task_id="twice"))
    wf.add_signature(noop.si().set(task_id="twice"))
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    text = messages(excinfo)
    assert "duplicate task id" in text and "twice" in text
    assert "tests.add" in text and "tests.noop" in text


def test_apply_async__task_id_already_used_by_another_workflow(no_rows_written):
    first = Workflow(name="first")
    first.add_signature(noop.si().set(task_id="taken-id"))
    first.apply_async()
    before = row_counts()
    second = Workflow(name="second")
    second.add_signature(noop.si().set(task_id="fresh-id"))
    second.add_signature(add.s(1, 2).set(task_id="taken-id"))
    with pytest.raises(ValidationError) as excinfo:
        second.apply_async()
    text = messages(excinfo)
    assert "taken-id" in text and "already used" in text and "fresh-id" not in text
    assert row_counts() == before
    assert not Workflow.objects.filter(pk=second.pk).exists()
    assert second._state.adding and all(n.pk is None for n in second.draft.nodes)
    # The refused draft can be fixed and applied.
    second.draft.nodes[1].task_id = "another-fresh-id"
    second.apply_async()
    assert Workflow.objects.get(pk=second.pk).nodes.count() == 2
    Workflow.objects.all().delete()


def test_add_signature__dependency_on_a_node_of_another_workflow(empty_tables):
    one, two = Workflow(), Workflow()
    foreign = one.add_signature(noop.si().set(task_id="foreign-node"))
    with pytest.raises(ValidationError, match="foreign-node"):
        two.add_signature(noop.si(), dependencies=[foreign])
    with pytest.raises(ValidationError, match="foreign-node"):
        two.add_celery_canvas(chain(noop.si(), noop.si()), dependencies=[foreign])
    own = two.add_signature(noop.si())
    with pytest.raises(ValidationError, match="foreign-node"):
        own.add_dependency(foreign)


def test_add_signature__dependency_on_a_saved_node_is_refused(no_rows_written):
    saved = Workflow()
    node = saved.add_signature(noop.si().set(task_id="saved-node"))
    saved.apply_async()
    before = row_counts()
    draft = Workflow()
    with pytest.raises(ValidationError, match="saved-node"):
        draft.add_signature(noop.si(), dependencies=[node])
    with pytest.raises(ValidationError, match="saved-node"):
        node.add_dependency(draft.add_signature(noop.si()))
    assert row_counts() == before
    Workflow.objects.all().delete()


@pytest.mark.parametrize(
    "make_sig, part",
    [
        (lambda: add.s(object(), 2), "args"),
        (lambda: add.s(1, y={1, 2}), "kwargs"),
        (lambda: add.s(math.nan, 1), "args"),
        (lambda: add.s(1, 2).set(priority=object()), "options"),
    ],
    ids=["args", "kwargs", "nan", "signature-options"],
)
def test_apply_async__non_json_call_names_the_node_and_the_part(empty_tables, make_sig, part):
    wf = Workflow()
    wf.add_signature(noop.si("fine"))
    wf.add_signature(make_sig().set(task_id="bad-call"))
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    text = messages(excinfo)
    assert "bad-call" in text and f"{part} are not JSON-serialisable" in text
    assert len(excinfo.value.messages) == 1


def test_apply_async__non_json_node_custom_payload_names_the_node(empty_tables):
    wf = Workflow()
    node = wf.add_signature(noop.si().set(task_id="bad-payload-node"))
    node.custom_payload["when"] = object()
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    assert "bad-payload-node" in messages(excinfo) and "custom_payload" in messages(excinfo)


@pytest.mark.parametrize("field", ["custom_payload", "options"])
def test_apply_async__non_json_workflow_field_names_the_field(empty_tables, field):
    wf = Workflow(**{field: {"x": object()}})
    wf.add_signature(noop.si())
    with pytest.raises(ValidationError, match=f"Workflow {field} is not JSON"):
        wf.apply_async()


def test_apply_async__non_json_task_options_are_refused(empty_tables):
    wf = Workflow()
    wf.add_signature(noop.si())
    with pytest.raises(ValidationError, match="tasks_options is not JSON"):
        wf.apply_async(options={"headers": {"x": object()}})


def test_apply_async__reports_every_problem_at_once(empty_tables):
    wf = Workflow(custom_payload={"x": object()})
    wf.add_signature(add.s(object(), 1).set(task_id="first-bad"))
    wf.add_signature(noop.si().set(task_id="dup"))
    wf.add_signature(noop.si().set(task_id="dup"))
    with pytest.raises(ValidationError) as excinfo:
        wf.apply_async()
    assert len(excinfo.value.messages) == 3


@pytest.mark.parametrize(
    "canvas", [chain(noop.si(), noop.si()), group(noop.si(), noop.si()), chord([noop.si()], noop.si())],
    ids=["chain", "group", "chord"],
)
def test_add_signature__refuses_a_canvas(empty_tables, canvas):
    wf = Workflow()
    with pytest.raises(ValidationError, match=f"got a {type(canvas).__name__}.*add_celery_canvas"):
        wf.add_signature(canvas)
    assert wf.draft.nodes == []


def test_add_signature__unknown_trigger_rule_names_the_rule(empty_tables):
    wf = Workflow()
    with pytest.raises(ValidationError, match="'sometimes'"):
        wf.add_signature(noop.si(), trigger_rule="sometimes")
    assert wf.draft.nodes == []


def test_apply_async__applying_twice_is_refused(no_rows_written):
    wf = Workflow()
    wf.add_signature(noop.si())
    wf.apply_async()
    before = row_counts()
    with pytest.raises(ValidationError, match=f"{wf.pk} was already applied"):
        wf.apply_async()
    with pytest.raises(ValidationError, match="already applied"):
        wf.add_signature(noop.si())
    with pytest.raises(ValidationError, match="already applied"):
        wf.add_celery_canvas(group(noop.si()))
    with pytest.raises(ValidationError, match="already applied"):
        wf.link_error(noop.si())
    assert row_counts() == before
    Workflow.objects.all().delete()


def test_add_dependency__refused_once_applied(no_rows_written):
    wf = Workflow()
    a, b = wf.add_signature(noop.si()), wf.add_signature(noop.si())
    wf.apply_async()
    before = row_counts()
    with pytest.raises(ValidationError, match=b.task_id):
        b.add_dependency(a)
    assert row_counts() == before
    Workflow.objects.all().delete()


@pytest.mark.parametrize(
    "make_canvas, culprit",
    [
        (lambda: "tests.noop", "'tests.noop'"),
        (lambda: 42, "int: 42"),
        (lambda: group(noop.si(), "oops"), "'oops'"),
        (lambda: chord([noop.si(), 42], noop.si()), "42"),
        (lambda: {"no": "task"}, "{'no': 'task'}"),
    ],
    ids=["string", "int", "in-group", "in-chord-header", "dict"],
)
def test_add_celery_canvas__non_signature_names_the_object(empty_tables, make_canvas, culprit):
    wf = Workflow()
    with pytest.raises(ValidationError) as excinfo:
        wf.add_celery_canvas(make_canvas())
    assert "expected a Celery signature" in messages(excinfo) and culprit in messages(excinfo)


def test_add_signature__non_signature_is_refused(empty_tables):
    wf = Workflow()
    with pytest.raises(ValidationError, match="expected a Celery signature or canvas, got method"):
        wf.add_signature(noop.si)
