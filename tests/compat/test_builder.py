"""The celery-dyrygent door (django_dyrygent.workflows) before a worker is involved.

Written from celery-dyrygent 0.8's documented behaviour and public methods:
what a user's code reads and calls while building a workflow.
"""

import math
from datetime import timedelta
from fractions import Fraction

import pytest
from celery import chain, chord, group
from celery.canvas import Signature
from django.core.exceptions import ValidationError

from django_dyrygent import models
from django_dyrygent.workflows import (
    Workflow,
    WorkflowException,
    WorkflowNode,
    WorkflowResult,
    register_workflow_processor,
)
from tests.celery_app import app as celery_app
from tests.tasks import add, noop, record

pytestmark = pytest.mark.django_db


def nameless(n):
    """A signature naming no task, frozen with a readable id: how celery-dyrygent's tests build graphs."""
    return Signature(task_id=f"task-{n}")


def tid(task_id):
    return noop.si().set(task_id=task_id)


# -- inspection: nodes dict, node.id, node.dependencies --------------------------------------


def test_nodes__are_a_dict_keyed_by_task_id_in_the_order_added():
    wf = Workflow()
    wf.add_celery_canvas(chain(tid("a"), group(tid("b"), tid("c"))))
    assert list(wf.nodes.keys()) == ["a", "b", "c"]
    assert all(isinstance(n, WorkflowNode) and n.id == key for key, n in wf.nodes.items())
    assert wf.nodes["b"] is wf.nodes["b"]  # one wrapper per node


def test_dependencies__are_a_dict_of_task_ids_before_save_joins_seen_through():
    wf = Workflow()
    wf.add_celery_canvas(chain(group(nameless(1), nameless(2)), group(nameless(3), nameless(4)), nameless(5)))
    deps = {tid: set(n.dependencies) for tid, n in wf.nodes.items()}
    assert deps == {
        "task-1": set(), "task-2": set(),
        "task-3": {"task-1", "task-2"}, "task-4": {"task-1", "task-2"},
        "task-5": {"task-3", "task-4"},
    }
    assert wf.nodes["task-1"].dependencies == {}
    assert wf.nodes["task-3"].dependencies == {"task-1": None, "task-2": None}
    # Joins are an edge-count optimisation of the rows, invisible through this door.
    assert all(n.model.kind == models.WorkflowNode.Kind.TASK for n in wf.nodes.values())


def test_add_celery_chain__with_two_dependencies_threads_them_into_the_first_step():
    wf = Workflow()
    sigs = [nameless(n) for n in range(10)]
    deps = [wf.add_signature(sigs[8]), wf.add_signature(sigs[9])]
    leaves = wf.add_celery_chain(chain(sigs[:-2]), deps)
    assert leaves == [wf.nodes["task-7"]]
    assert set(wf.nodes["task-0"].dependencies) == {"task-8", "task-9"}
    for n in range(1, 8):
        assert set(wf.nodes[f"task-{n}"].dependencies) == {f"task-{n - 1}"}


def test_add_celery_group_and_chord__return_what_followers_depend_on():
    wf = Workflow()
    root = wf.add_signature(nameless(9))
    members = wf.add_celery_group(group(nameless(1), nameless(2)), [root])
    assert set(members) == {wf.nodes["task-1"], wf.nodes["task-2"]}
    body = wf.add_celery_chord(chord([nameless(3), nameless(4)], nameless(5)), members)
    assert body == [wf.nodes["task-5"]]
    assert set(wf.nodes["task-5"].dependencies) == {"task-3", "task-4"}
    assert set(wf.nodes["task-3"].dependencies) == {"task-1", "task-2"}


def test_add_celery_canvas__empty_group_and_empty_chord_header_pass_dependencies_through():
    wf = Workflow()
    a, b = wf.add_signature(nameless(1)), wf.add_signature(nameless(2))
    assert set(wf.add_celery_group(group(), [a, b])) == {a, b}
    assert wf.add_celery_canvas(group(), [a]) == [a]
    body = wf.add_celery_chord(chord([], nameless(3)), [a, b])
    assert set(body[0].dependencies) == {"task-1", "task-2"}


def test_add_celery_signature__gives_an_unfrozen_signature_an_id_and_returns_a_list():
    wf = Workflow()
    sig = Signature()
    (node,) = wf.add_celery_signature(sig)
    assert sig.id and node.id == sig.id and node.signature is sig


@pytest.mark.parametrize("method, canvas", [
    ("add_celery_chain", group(noop.si())), ("add_celery_group", chain(noop.si(), noop.si())),
    ("add_celery_chord", noop.si()), ("add_celery_signature", group(noop.si())),
])
def test_add_celery_typed__wrong_canvas_type_is_a_workflow_exception(method, canvas):
    with pytest.raises(WorkflowException, match=f"{method}\\(\\) takes a Celery"):
        getattr(Workflow(), method)(canvas)


def test_iterate_dependencies__yields_pairs_sorted_by_task_id():
    wf = Workflow()
    wf.add_celery_canvas(chain(nameless(2), nameless(1)))
    pairs = [(n.id, d.id if d else None) for n, d in wf.iterate_dependencies()]
    assert pairs == [("task-1", "task-2"), ("task-2", None)]


# -- errors: WorkflowException ------------------------------------------------------------------


def test_workflow_exception__is_also_a_validation_error():
    assert issubclass(WorkflowException, ValidationError)
    wf = Workflow()
    with pytest.raises(WorkflowException, match="expected a Celery signature"):
        wf.add_celery_canvas(42)


def test_add_signature__same_signature_twice_is_refused_at_add_time():
    wf = Workflow()
    sig = noop.si().set(task_id="twice")
    wf.add_signature(sig)
    with pytest.raises(WorkflowException, match="already added to the workflow"):
        wf.add_signature(sig)
    assert list(wf.nodes) == ["twice"]


def test_workflow_node__made_by_hand_keeps_its_own_dependencies():
    n1, n2 = WorkflowNode(nameless(1)), WorkflowNode(nameless(2))
    n1.add_dependency(n2)
    assert n1.dependencies == {"task-2": None} and n1.id == "task-1" and n1.signature == nameless(1)
    with pytest.raises(WorkflowException, match="already added"):
        n1.add_dependency(n2)
    with pytest.raises(WorkflowException, match="not frozen"):
        WorkflowNode(Signature())


def test_node_add_dependency__inside_a_workflow_goes_to_the_draft_and_refuses_a_foreign_node():
    wf, other = Workflow(), Workflow()
    a, b = wf.add_signature(nameless(1)), wf.add_signature(nameless(2))
    b.add_dependency(a, {"why": "test"})
    assert b.dependencies == {"task-1": {"why": "test"}}
    assert wf.model.draft.dependencies_of(b.model) == [a.model]
    with pytest.raises(WorkflowException, match="already added"):
        b.add_dependency(a)
    with pytest.raises(WorkflowException, match="same unsaved workflow"):
        b.add_dependency(other.add_signature(nameless(3)))


def test_connect__unknown_hook_name_is_a_workflow_exception_at_connect_time():
    with pytest.raises(WorkflowException, match="'on_boom': invalid signal"):
        Workflow.connect("on_boom")


# -- positional arguments never set a primary key --------------------------------------------------


def test_positional_arguments__are_the_peers_not_a_primary_key():
    wf = Workflow({"priority": 3})
    assert wf.workflow_options == {"priority": 3} and wf.model.options == {"priority": 3}
    assert isinstance(wf.model.pk, type(models.Workflow().pk))  # a fresh uuid, not the dict
    node = WorkflowNode(nameless(1))
    assert node.id == "task-1"


def test_model_positional_dict__is_a_type_error_naming_the_keyword_form():
    with pytest.raises(TypeError, match=r"Workflow\(options=\{...\}\)"):
        models.Workflow({"priority": 3})
    with pytest.raises(TypeError, match="by keyword"):
        models.WorkflowNode(noop.si())
    # Loading rows still works (Django passes field values positionally).
    wf = models.Workflow(name="positional-load")
    wf.add_signature(noop.si())
    wf.apply_async()
    assert models.Workflow.objects.get(pk=wf.pk).nodes.get().task_name == "tests.noop"


# -- nameless signatures: accepted to build, refused only to run ---------------------------------


def test_nameless_signatures__build_a_graph_and_are_refused_at_apply_async_naming_the_node():
    wf = Workflow()
    wf.add_celery_canvas(chain(nameless(1), nameless(2)))
    assert set(wf.nodes["task-2"].dependencies) == {"task-1"}
    with pytest.raises(WorkflowException, match="task-1.*names no task") as excinfo:
        wf.apply_async()
    assert len(excinfo.value.messages) == 2
    assert not models.Workflow.objects.exists()


# -- policies ----------------------------------------------------------------------------------------


def test_set_retry_policy__checks_like_the_peer():
    wf = Workflow()
    wf.set_retry_policy("random", 2, 5)
    assert wf.retry_policy == ["random", 2, 5]
    with pytest.raises(WorkflowException, match='Invalid retry policy, got "fixed"'):
        wf.set_retry_policy("fixed", 1)
    with pytest.raises(WorkflowException, match="0 < min <= max"):
        wf.set_retry_policy("random", 5, 2)


def test_set_max_processing_time__becomes_the_deadline_at_apply_async():
    wf = Workflow()
    wf.add_signature(noop.si())
    wf.set_max_processing_time(120)
    with pytest.raises(WorkflowException, match="positive number"):
        wf.set_max_processing_time(0)
    wf.apply_async()
    row = models.Workflow.objects.get(pk=wf.id)
    assert 110 <= (row.deadline - row.created_at).total_seconds() <= 130


def test_set_max_processing_time__any_real_number_becomes_the_deadline():
    """A Fraction is a Real, as the check asks; timedelta() takes only int and float."""
    wf = Workflow()
    wf.add_signature(noop.si())
    wf.set_max_processing_time(Fraction(241, 2))
    wf.apply_async()
    row = models.Workflow.objects.get(pk=wf.id)
    assert 110 <= (row.deadline - row.created_at).total_seconds() <= 130


@pytest.mark.parametrize("seconds, message", [
    (math.nan, "positive number"),
    (math.inf, "too large"),
    (1e300, "too large"),
    (timedelta.max.total_seconds(), "too large"),
])
def test_set_max_processing_time__no_deadline_past_the_last_date_is_accepted(seconds, message):
    wf = Workflow()
    with pytest.raises(WorkflowException, match=message):
        wf.set_max_processing_time(seconds)
    assert wf.max_processing_time == 7 * 24 * 3600


def test_set_max_processing_time__default_is_seven_days():
    wf = Workflow()
    wf.add_signature(noop.si())
    wf.apply_async()
    row = models.Workflow.objects.get(pk=wf.id)
    assert abs((row.deadline - row.created_at).total_seconds() - 7 * 24 * 3600) < 60


# -- skip_tasks before start --------------------------------------------------------------------------


def test_skip_tasks__saves_the_nodes_skipped_and_releases_their_followers():
    wf = Workflow()
    wf.add_celery_canvas(chain(tid("s1"), group(tid("s2"), tid("s3")), tid("s4")))
    wf.skip_tasks(["s1", "s2"])
    wf.apply_async()
    rows = {n.task_id: n for n in models.WorkflowNode.objects.filter(workflow_id=wf.id)}
    assert rows["s1"].state == rows["s2"].state == "SKIPPED"
    assert rows["s3"].waiting == 0  # its only dependency was skipped
    row = models.Workflow.objects.get(pk=wf.id)
    assert (row.nodes_total, row.nodes_done, row.nodes_skipped) == (4, 2, 2)
    assert models.WorkflowEvent.objects.filter(workflow=row, new_state="SKIPPED").count() == 2


def test_skip_tasks__refuses_a_task_whose_parent_is_not_skipped_and_unknown_ids():
    wf = Workflow()
    wf.add_celery_canvas(chain(nameless(1), nameless(2)))
    with pytest.raises(WorkflowException, match="not all parents finished"):
        wf.skip_tasks(["task-2"])
    with pytest.raises(WorkflowException, match="not in the workflow: nope"):
        wf.skip_tasks(["nope"])
    assert wf.model.draft.skipped == []


# -- apply_async(options): workflow-wide options win in this door ---------------------------------


def test_apply_async__options_override_the_signatures_own_and_return_a_result():
    wf = Workflow({"priority": 9})
    wf.add_signature(noop.si().set(priority=1, queue="own", task_id="opt-1"))
    wf.add_signature(noop.si().set(task_id="opt-2"))
    result = wf.apply_async(options={"priority": 5})
    assert isinstance(result, WorkflowResult) and result.id == wf.id
    stored = dict(models.WorkflowNode.objects.filter(workflow_id=wf.id).values_list("task_id", "signature"))
    assert stored["opt-1"]["options"] == {"priority": 5, "queue": "own"}
    assert stored["opt-2"]["options"] == {"priority": 5}
    row = models.Workflow.objects.get(pk=wf.id)
    assert (row.options, row.tasks_options) == ({"priority": 9}, {"priority": 5})
    with pytest.raises(WorkflowException, match="already applied"):
        wf.apply_async()


def test_model_apply_async__keeps_the_signatures_own_options():
    wf = models.Workflow()
    wf.add_signature(noop.si().set(priority=1, task_id="model-opt"))
    wf.apply_async(options={"priority": 5})
    stored = models.WorkflowNode.objects.get(task_id="model-opt").signature
    assert stored["options"] == {"priority": 1}  # the engine merges tasks_options under it


# -- link / link_error on a signature ------------------------------------------------------------------


def test_link__immutable_callbacks_become_nodes_after_the_signature():
    wf = Workflow()
    sig = add.s(1, 2).set(task_id="linked")
    sig.link(record.si("ok").set(task_id="on-ok"))
    sig.link_error(record.si("err").set(task_id="on-err"))
    wf.add_signature(sig)
    assert list(wf.nodes) == ["linked", "on-ok", "on-err"]
    assert wf.nodes["on-ok"].dependencies == wf.nodes["on-err"].dependencies == {"linked": None}
    assert wf.nodes["on-ok"].model.trigger_rule == "all_success"
    assert wf.nodes["on-err"].model.trigger_rule == "one_failed"


def test_link__on_a_chain_follows_its_last_step():
    wf = Workflow()
    canvas = chain(nameless(1), nameless(2))
    canvas.link(noop.si().set(task_id="after-chain"))
    wf.add_celery_canvas(canvas)
    assert wf.nodes["after-chain"].dependencies == {"task-2": None}


def test_link__mutable_callback_is_refused_without_pass_results_naming_it():
    sig = add.s(1, 2)
    sig.link(add.s(10))
    with pytest.raises(WorkflowException, match="link=tests.add.*pass_results=True"):
        Workflow().add_signature(sig)
    wf = Workflow(pass_results=True)
    wf.add_signature(sig)
    assert len(wf.nodes) == 2


def test_link_error__mutable_errback_is_refused_in_both_doors():
    sig = add.s(1, 2)
    sig.link_error(noop.s())
    with pytest.raises(WorkflowException, match="link_error=tests.noop.*request, exception and traceback"):
        Workflow().add_signature(sig)
    with pytest.raises(ValidationError, match="link_error=tests.noop"):
        models.Workflow().add_celery_canvas(sig)


# -- what exists only in a message -------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda wf: wf.to_dict(), lambda wf: Workflow.from_dict({}), lambda wf: wf.simulate_tick(),
])
def test_message_only_methods__say_what_to_use_instead(call):
    with pytest.raises(NotImplementedError, match="docs/migrating-from-celery-dyrygent.md"):
        call(Workflow())


# -- register_workflow_processor ---------------------------------------------------------------------


def test_register_workflow_processor__accepts_the_peers_keywords():
    from django_dyrygent.tasks import tick

    task = celery_app.tasks[tick.name]
    try:
        processor = register_workflow_processor(celery_app, name="workflow-processor", bind=True,
                                                max_retries=1, queue="ticks-q")
        assert processor is task and processor.name == "django_dyrygent.tick"
        assert processor.queue == "ticks-q"
        with pytest.raises(TypeError, match="unknown task option.*colour"):
            register_workflow_processor(celery_app, colour="blue")
        assert task._get_exec_options()["queue"] == "ticks-q"  # what apply_async will send with
    finally:
        task.__dict__.pop("queue", None)
        task._exec_options = None


def test_after_apply_async__the_graph_is_fixed_and_still_inspectable():
    wf = Workflow()
    a, b = wf.add_signature(tid("task-1")), wf.add_signature(tid("task-2"))
    wf.apply_async()
    assert list(wf.nodes) == ["task-1", "task-2"] and b.dependencies == {}
    with pytest.raises(WorkflowException, match="already applied"):
        b.add_dependency(a)
    with pytest.raises(WorkflowException, match="already applied"):
        wf.add_signature(noop.si())
    assert models.WorkflowEdge.objects.count() == 0


def test_result_wait__times_out_with_celerys_and_pythons_timeout_error():
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    wf = Workflow()
    wf.add_signature(noop.si())
    result = wf.apply_async()  # no worker here and no commit: it stays INITIAL
    with pytest.raises(CeleryTimeoutError, match="still INITIAL"):
        result.wait(timeout=0.2, interval=0.05)
    with pytest.raises(TimeoutError):
        result.get(timeout=0.1, interval=0.05)
    assert result.state == "INITIAL" and not result.ready() and result.start_sent is None
