"""Canvas import: Celery chain/group/chord -> node and edge rows.

The dependency rules are celery-dyrygent's (a chain threads dependencies
through its steps, a group's members all depend on what the group depends on,
a chord body depends on every task of its header, an empty group or chord
header passes its dependencies through). Internal join nodes change how the
edges are drawn, not what waits for what, so most tests compare the
*effective* task dependencies (joins expanded) with what celery-dyrygent
would build, and then check the stored rows themselves.
"""

import uuid

import pytest
from celery import chain, chord, group

from django_dyrygent.canvas import CELERY_CHAINING_OPTIONS
from django_dyrygent.canvas import uuid as canvas_uuid
from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowNode
from tests.tasks import add, noop, tsum

pytestmark = pytest.mark.django_db

TASK = WorkflowNode.Kind.TASK
JOIN = WorkflowNode.Kind.JOIN


def t(label):
    """An immutable task whose first argument names it in assertions."""
    return noop.si(label)


def label(node):
    return node.signature["args"][0] if node.kind == TASK else f"join#{node.position}"


def saved_graph(wf):
    """(nodes by pk, {node pk: [dependency pks in edge position order]}) read from the rows."""
    nodes = {n.pk: n for n in WorkflowNode.objects.filter(workflow=wf)}
    deps = {pk: [] for pk in nodes}
    for edge in WorkflowEdge.objects.filter(workflow=wf).order_by("node_id", "position"):
        deps[edge.node_id].append(edge.dependency_id)
    return nodes, deps


def effective_deps(wf):
    """{task label: set of task labels it waits for}, joins expanded, from the saved rows."""
    nodes, deps = saved_graph(wf)

    def tasks_behind(pk):
        out = set()
        for dep in deps[pk]:
            if nodes[dep].kind == JOIN:
                out |= tasks_behind(dep)
            else:
                out.add(label(nodes[dep]))
        return out

    return {label(n): tasks_behind(pk) for pk, n in nodes.items() if n.kind == TASK}


def apply(wf):
    wf.apply_async()
    return wf


def test_add_celery_canvas__single_signature_is_one_root_node():
    wf = Workflow()
    leaves = wf.add_celery_canvas(t("a"))
    apply(wf)
    (node,) = WorkflowNode.objects.filter(workflow=wf)
    assert [n.pk for n in leaves] == [node.pk]
    assert (node.kind, node.position, node.waiting, node.task_name) == (TASK, 0, 0, "tests.noop")
    assert node.state == WorkflowNode.State.PENDING
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 0
    assert Workflow.objects.get(pk=wf.pk).nodes_total == 1


def test_add_celery_canvas__chain_threads_each_step_after_the_previous():
    wf = Workflow()
    leaves = wf.add_celery_canvas(chain(t("a"), t("b"), t("c")))
    apply(wf)
    assert [label(n) for n in leaves] == ["c"]
    assert effective_deps(wf) == {"a": set(), "b": {"a"}, "c": {"b"}}
    nodes = list(WorkflowNode.objects.filter(workflow=wf).order_by("position"))
    assert [(label(n), n.position, n.waiting) for n in nodes] == [("a", 0, 0), ("b", 1, 1), ("c", 2, 1)]
    # One node follows one node: no join needed.
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 2


def test_add_celery_canvas__group_members_share_the_group_dependencies():
    wf = Workflow()
    root = wf.add_signature(t("root"))
    leaves = wf.add_celery_canvas(group(t("a"), t("b"), t("c")), dependencies=[root])
    apply(wf)
    assert sorted(label(n) for n in leaves) == ["a", "b", "c"]
    assert effective_deps(wf) == {"root": set(), "a": {"root"}, "b": {"root"}, "c": {"root"}}
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 3


def test_add_celery_canvas__chord_body_waits_for_every_header_task_through_one_join():
    wf = Workflow()
    leaves = wf.add_celery_canvas(chord([t("a"), t("b"), t("c")], t("body")))
    apply(wf)
    assert [label(n) for n in leaves] == ["body"]
    assert effective_deps(wf) == {"a": set(), "b": set(), "c": set(), "body": {"a", "b", "c"}}
    nodes, deps = saved_graph(wf)
    (join,) = [n for n in nodes.values() if n.kind == JOIN]
    # The join keeps header order in its edge positions (pass-results needs it).
    assert [label(nodes[d]) for d in deps[join.pk]] == ["a", "b", "c"]
    assert join.waiting == 3 and join.task_name == ""
    body = next(n for n in nodes.values() if n.kind == TASK and label(n) == "body")
    assert deps[body.pk] == [join.pk] and body.waiting == 1
    # Joins are not counted as work.
    assert Workflow.objects.get(pk=wf.pk).nodes_total == 4


def test_add_celery_canvas__chord_header_member_chain_and_group_nested_in_chord():
    """chain in group in chord: the body waits for the last step of each header branch."""
    wf = Workflow()
    wf.add_celery_canvas(
        chord(
            [chain(t("a1"), group(t("a2"), t("a3"))), group(t("b1"), chain(t("b2"), t("b3"))), t("c")],
            t("body"),
        )
    )
    apply(wf)
    assert effective_deps(wf) == {
        "a1": set(), "a2": {"a1"}, "a3": {"a1"},
        "b1": set(), "b2": set(), "b3": {"b2"},
        "c": set(),
        "body": {"a2", "a3", "b1", "b3", "c"},
    }


def test_add_celery_canvas__chord_in_chain_runs_between_its_neighbours():
    wf = Workflow()
    leaves = wf.add_celery_canvas(chain(t("a"), chord([t("h1"), t("h2")], t("body")), t("z")))
    apply(wf)
    assert [label(n) for n in leaves] == ["z"]
    assert effective_deps(wf) == {
        "a": set(), "h1": {"a"}, "h2": {"a"}, "body": {"h1", "h2"}, "z": {"body"},
    }


def test_add_celery_canvas__group_of_chains_runs_branches_independently():
    wf = Workflow()
    leaves = wf.add_celery_canvas(group(chain(t("a1"), t("a2")), chain(t("b1"), t("b2"), t("b3"))))
    apply(wf)
    assert sorted(label(n) for n in leaves) == ["a2", "b3"]
    assert effective_deps(wf) == {"a1": set(), "a2": {"a1"}, "b1": set(), "b2": {"b1"}, "b3": {"b2"}}
    assert WorkflowNode.objects.filter(workflow=wf, kind=JOIN).count() == 0


def test_add_celery_canvas__chained_groups_meet_at_one_join():
    wf = Workflow()
    wf.add_celery_canvas(chain(group(t("a"), t("b")), group(t("c"), t("d"))))
    apply(wf)
    assert effective_deps(wf) == {"a": set(), "b": set(), "c": {"a", "b"}, "d": {"a", "b"}}
    assert WorkflowNode.objects.filter(workflow=wf, kind=JOIN).count() == 1
    # a->J, b->J, J->c, J->d instead of the four direct edges (equal here, linear in general).
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 4


def test_add_celery_canvas__empty_group_passes_its_dependencies_through():
    wf = Workflow()
    root = wf.add_signature(t("root"))
    assert wf.add_celery_canvas(group(), dependencies=[root]) == [root]
    assert wf.add_celery_canvas(group()) == []
    follower = wf.add_celery_canvas(t("follower"), dependencies=wf.add_celery_canvas(group(), [root]))
    apply(wf)
    assert [label(n) for n in follower] == ["follower"]
    assert effective_deps(wf) == {"root": set(), "follower": {"root"}}


def test_add_celery_canvas__empty_chord_header_passes_dependencies_to_the_body():
    wf = Workflow()
    wf.add_celery_canvas(chain(group(t("a"), t("b")), chord([], t("body")), t("z")))
    apply(wf)
    assert effective_deps(wf) == {"a": set(), "b": set(), "body": {"a", "b"}, "z": {"body"}}


def test_add_celery_canvas__several_dependencies_feed_a_canvas_through_one_join():
    wf = Workflow()
    a, b = wf.add_signature(t("a")), wf.add_signature(t("b"))
    wf.add_celery_canvas(group(t("c"), t("d"), t("e")), dependencies=[a, b])
    apply(wf)
    assert effective_deps(wf) == {"a": set(), "b": set(), "c": {"a", "b"}, "d": {"a", "b"}, "e": {"a", "b"}}
    # 2 into the join + 3 out of it, not 2 x 3.
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 5


def test_add_signature__explicit_dependencies_become_edges_in_given_order():
    wf = Workflow()
    a, b, c = wf.add_signature(t("a")), wf.add_signature(t("b")), wf.add_signature(t("c"))
    d = wf.add_signature(t("d"), dependencies=[c, a, b])
    apply(wf)
    nodes, deps = saved_graph(wf)
    assert [label(nodes[pk]) for pk in deps[d.pk]] == ["c", "a", "b"]
    d.refresh_from_db()
    assert d.waiting == 3 and d.position == 3
    assert set(d.dependencies.all()) == {a, b, c}
    assert set(a.dependents.all()) == {d}


def test_add_dependency__adds_an_edge_between_draft_nodes():
    wf = Workflow()
    a, b = wf.add_signature(t("a")), wf.add_signature(t("b"))
    b.add_dependency(a)
    b.add_dependency(a)  # idempotent: one edge
    apply(wf)
    assert effective_deps(wf) == {"a": set(), "b": {"a"}}
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 1
    b.refresh_from_db()
    assert b.waiting == 1


def test_leaves__are_the_nodes_nobody_depends_on_before_and_after_apply():
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), group(t("b"), t("c"))))
    extra = wf.add_signature(t("x"))
    wf.link_finalizer(t("fin"))
    before = wf.leaves()
    assert sorted(label(n) for n in before) == ["b", "c", "x"]
    assert extra in before
    apply(wf)
    after = Workflow.objects.get(pk=wf.pk).leaves()
    assert sorted(label(n) for n in after) == ["b", "c", "x"]
    assert all(n.pk for n in after)


def test_leaves__end_in_the_join_of_a_trailing_group_only_when_it_was_joined():
    wf = Workflow()
    leaves = wf.add_celery_canvas(chain(t("a"), group(t("b"), t("c"))))
    follower = wf.add_signature(t("z"), dependencies=leaves)
    assert wf.leaves() == [follower]


def test_add_signature__freezes_a_signature_without_id_on_the_users_object():
    sig = add.s(1, 2)
    assert sig.id is None
    wf = Workflow()
    node = wf.add_signature(sig)
    assert sig.id and node.task_id == sig.id
    apply(wf)
    assert WorkflowNode.objects.get(pk=node.pk).task_id == sig.id


def test_add_signature__keeps_a_preset_task_id():
    sig = add.s(1, 2).set(task_id="preset-task-id-canvas")
    wf = Workflow()
    node = wf.add_signature(sig)
    apply(wf)
    assert WorkflowNode.objects.get(pk=node.pk).task_id == "preset-task-id-canvas"


def test_add_celery_canvas__freezes_every_signature_inside_the_canvas():
    canvas = chord([add.s(1, 2), add.s(3, 4)], tsum.s())
    wf = Workflow()
    wf.add_celery_canvas(canvas)
    apply(wf)
    ids = set(WorkflowNode.objects.filter(workflow=wf, kind=TASK).values_list("task_id", flat=True))
    assert {s.id for s in canvas.tasks} | {canvas.body.id} == ids
    assert None not in ids


def test_add_celery_canvas__ten_chained_groups_of_a_hundred_grow_edges_linearly():
    """Drawn naively 9 hops x 100 x 100 = 90,000 edges; with joins 9 x (100 + 100)."""
    wf = Workflow()
    wf.add_celery_canvas(chain(*[group([noop.si(f"{g}-{i}") for i in range(100)]) for g in range(10)]))
    apply(wf)
    assert WorkflowNode.objects.filter(workflow=wf, kind=TASK).count() == 1000
    assert WorkflowNode.objects.filter(workflow=wf, kind=JOIN).count() == 9
    assert WorkflowEdge.objects.filter(workflow=wf).count() == 1800
    wf.refresh_from_db()
    assert wf.nodes_total == 1000
    waiting = set(WorkflowNode.objects.filter(workflow=wf).values_list("kind", "waiting"))
    assert waiting == {(JOIN, 100), (TASK, 0), (TASK, 1)}
    assert WorkflowNode.objects.filter(workflow=wf, waiting=0).count() == 100
    positions = list(WorkflowNode.objects.filter(workflow=wf).values_list("position", flat=True))
    assert sorted(positions) == list(range(1009))


def test_add_signature__strips_celery_chaining_options_keeps_execution_options():
    sig = add.s(1, 2).set(queue="fast", priority=3, countdown=2)
    sig.link(noop.si("next"))
    sig.link_error(noop.si("err"))
    sig.set(group_id="g", group_index=0, chord=tsum.s(), root_id="r", parent_id="p", reply_to="x")
    wf = Workflow()
    node = wf.add_signature(sig)
    apply(wf)
    stored = WorkflowNode.objects.get(pk=node.pk).signature
    assert stored == {
        "task": "tests.add", "args": [1, 2], "kwargs": {},
        "options": {"queue": "fast", "priority": 3, "countdown": 2}, "immutable": False,
    }
    # Celery's link / link_error are not dropped: they became nodes after the signature.
    followers = {n.signature["args"][0]: n.trigger_rule for n in WorkflowNode.objects.filter(workflow=wf)
                 if n.pk != node.pk}
    assert followers == {"next": "all_success", "err": "one_failed"}
    edges = WorkflowEdge.objects.filter(dependency=node)
    assert {e.node.signature["args"][0] for e in edges} == {"next", "err"}


def test_add_celery_canvas__an_already_frozen_chord_imports_cleanly():
    """Celery's freeze turns the header into a group and stamps chord/group options."""
    canvas = chord([add.s(1, 2), add.s(3, 4)], tsum.s())
    canvas.freeze()
    assert any(k in canvas.tasks.tasks[0].options for k in ("chord", "group_id"))
    wf = Workflow()
    leaves = wf.add_celery_canvas(canvas)
    apply(wf)
    assert [n.task_name for n in leaves] == ["tests.tsum"]
    nodes = list(WorkflowNode.objects.filter(workflow=wf, kind=TASK).order_by("position"))
    assert [n.task_id for n in nodes] == [s.id for s in canvas.tasks.tasks] + [canvas.body.id]
    for node in nodes:
        assert not set(node.signature["options"]) & CELERY_CHAINING_OPTIONS, node.signature
    assert effective_deps_by_name(wf) == {
        (nodes[0].task_id,): set(), (nodes[1].task_id,): set(),
        (nodes[2].task_id,): {nodes[0].task_id, nodes[1].task_id},
    }


def test_add_celery_canvas__an_already_frozen_chain_with_a_chord_and_groups_imports_cleanly():
    canvas = chain(t("a"), group(t("b1"), t("b2")), chord([t("c1"), t("c2")], t("body")), t("z"))
    canvas.freeze()
    wf = Workflow()
    wf.add_celery_canvas(canvas)
    apply(wf)
    assert effective_deps(wf) == {
        "a": set(), "b1": {"a"}, "b2": {"a"}, "c1": {"b1", "b2"}, "c2": {"b1", "b2"},
        "body": {"c1", "c2"}, "z": {"body"},
    }
    for sig in WorkflowNode.objects.filter(workflow=wf, kind=TASK).values_list("signature", flat=True):
        assert not set(sig["options"]) & CELERY_CHAINING_OPTIONS, sig


def test_add_celery_canvas__accepts_a_canvas_given_as_a_dict():
    wf = Workflow()
    wf.add_celery_canvas(dict(chain(t("a"), t("b"))))
    apply(wf)
    assert effective_deps(wf) == {"a": set(), "b": {"a"}}


def test_apply_async__stores_custom_payloads_and_options():
    wf = Workflow(name="payloads", options={"priority": 9}, custom_payload={"user_id": 7})
    node = wf.add_signature(t("a"))
    node.custom_payload["channel"] = "ops"
    wf.apply_async(options={"priority": 8})
    wf = Workflow.objects.get(pk=wf.pk)
    assert (wf.name, wf.options, wf.tasks_options, wf.custom_payload) == (
        "payloads", {"priority": 9}, {"priority": 8}, {"user_id": 7},
    )
    assert wf.state == Workflow.State.INITIAL
    assert WorkflowNode.objects.get(pk=node.pk).custom_payload == {"channel": "ops"}


def effective_deps_by_name(wf):
    """Like effective_deps, keyed by task id (for signatures without a label argument)."""
    nodes, deps = saved_graph(wf)

    def behind(pk):
        out = set()
        for dep in deps[pk]:
            out |= behind(dep) if nodes[dep].kind == JOIN else {nodes[dep].task_id}
        return out

    return {(n.task_id,): behind(pk) for pk, n in nodes.items() if n.kind == TASK}


def test_task_ids__are_random_version_4_uuids_as_celery_makes_them():
    """Task ids are made without ``uuid4()`` (half the cost per node): they must stay what Celery makes."""
    wf = Workflow(name="ids")
    wf.add_celery_canvas(chain(group(noop.si(), noop.si()), noop.si()))
    ids = [node.task_id for node in wf.draft.nodes] + [canvas_uuid() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, task_id)
