"""The admin's DAG layout: deterministic ranks, order, coordinates and collapsing."""

import random
import re
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from itertools import pairwise

import pytest
from celery import chain, group

from django_dyrygent.graph import layout as graph
from django_dyrygent.graph.layout import BOX_HEIGHT, BOX_WIDTH, DOT_RADIUS, GAP_X, GAP_Y, MARGIN
from django_dyrygent.models import Workflow
from tests.tasks import record

PITCH_Y = BOX_HEIGHT + GAP_Y
PITCH_X = BOX_WIDTH + GAP_X


def node(pk, task="t.a", kind="task", state="PENDING", **extra):
    return {"id": pk, "task_name": task, "kind": kind, "state": state, "position": pk, **extra}


def draw(nodes, edges, threshold=graph.COLLAPSE_THRESHOLD, sweeps=graph.SWEEPS):
    items, item_edges = graph.collapse(graph.Graph(nodes=nodes, edges=edges), threshold)
    return graph.layout(items, item_edges, sweeps=sweeps)


def by_id(drawing):
    return {item.id: item for item in drawing.items}


def order_of(drawing, rank):
    return [item.id for item in drawing.ranks[rank]]


def test_layout__rank_is_longest_path_from_a_root():
    # a -> b -> c and a shortcut a -> c: c must sit after b, not next to it.
    drawing = draw([node(1), node(2), node(3)], [(1, 2), (2, 3), (1, 3)])
    assert {i: item.rank for i, item in by_id(drawing).items()} == {"n1": 0, "n2": 1, "n3": 2}


def test_layout__orders_rank_by_barycentre_of_parents():
    # Children created in the opposite order of their parents get uncrossed.
    drawing = draw([node(1), node(2), node(3), node(4)], [(2, 3), (1, 4)])
    assert order_of(drawing, 0) == ["n1", "n2"]
    assert order_of(drawing, 1) == ["n4", "n3"]


def test_layout__second_sweep_brings_roots_feeding_the_same_node_together():
    # Roots a, b, c; p depends on a and c, q on b: the roots become a, c, b.
    nodes = [node(1), node(2), node(3), node(4), node(5)]
    edges = [(1, 4), (3, 4), (2, 5)]
    assert order_of(draw(nodes, edges, sweeps=1), 0) == ["n1", "n2", "n3"]
    drawing = draw(nodes, edges, sweeps=2)
    assert order_of(drawing, 0) == ["n1", "n3", "n2"]
    assert order_of(drawing, 1) == ["n4", "n5"]


def test_layout__ties_keep_creation_order():
    drawing = draw([node(1), node(2), node(3), node(4)], [(1, 2), (1, 3), (1, 4)])
    assert order_of(drawing, 1) == ["n2", "n3", "n4"]


def test_layout__coordinates_on_a_centred_grid():
    # 1 -> (2, 3): the root is centred against its two children.
    drawing = draw([node(1), node(2), node(3)], [(1, 2), (1, 3)])
    items = by_id(drawing)
    assert (items["n1"].x, items["n1"].y) == (MARGIN, MARGIN + PITCH_Y / 2)
    assert (items["n2"].x, items["n2"].y) == (MARGIN + PITCH_X, MARGIN)
    assert (items["n3"].x, items["n3"].y) == (MARGIN + PITCH_X, MARGIN + PITCH_Y)
    assert drawing.width == 2 * MARGIN + 2 * BOX_WIDTH + GAP_X
    assert drawing.height == 2 * MARGIN + 2 * BOX_HEIGHT + GAP_Y


def test_layout__edges_are_cubic_beziers_between_box_sides():
    drawing = draw([node(1), node(2)], [(1, 2)])
    (edge,) = drawing.edges
    y = MARGIN + BOX_HEIGHT / 2
    x1, x2 = MARGIN + BOX_WIDTH, MARGIN + PITCH_X
    mid = (x1 + x2) / 2
    assert edge.path == f"M{x1:g},{y:g} C{mid:g},{y:g} {mid:g},{y:g} {x2:g},{y:g}"


def test_layout__join_is_a_dot_in_a_narrow_column():
    drawing = draw([node(1), node(2), node(3, kind="join", task=""), node(4)], [(1, 3), (2, 3), (3, 4)])
    items = by_id(drawing)
    join = items["n3"]
    assert join.is_dot and join.width == join.height == 2 * DOT_RADIUS
    assert join.x == MARGIN + PITCH_X
    assert items["n4"].x == join.x + 2 * DOT_RADIUS + GAP_X
    # Centred vertically against the two boxes feeding it.
    assert join.y + DOT_RADIUS == MARGIN + PITCH_Y / 2 + BOX_HEIGHT / 2


def test_layout__callbacks_go_in_a_last_column():
    drawing = draw([node(1), node(2), node(3, kind="finalizer")], [(1, 2)])
    assert by_id(drawing)["n3"].rank == 2
    assert order_of(drawing, 2) == ["n3"]


def test_layout__cycle__raises_naming_the_problem():
    with pytest.raises(ValueError, match="cycle"):
        draw([node(1), node(2)], [(1, 2), (2, 1)])


def test_collapse__big_group_of_same_siblings_becomes_one_box():
    siblings = list(range(2, 27))  # 25 > threshold 20
    nodes = [node(1, task="t.start")] + [node(i, task="t.build") for i in siblings] + [node(27, task="t.end")]
    edges = [(1, i) for i in siblings] + [(i, 27) for i in siblings]
    drawing = draw(nodes, edges)
    assert [item.id for item in drawing.items] == ["n1", "g2", "n27"]
    box = by_id(drawing)["g2"]
    assert box.is_group and len(box.nodes) == 25
    assert box.label == "25 × build"
    assert [(e.source.id, e.target.id) for e in drawing.edges] == [("n1", "g2"), ("g2", "n27")]


def test_collapse__group_at_threshold_stays_expanded():
    siblings = list(range(2, 22))  # exactly 20
    drawing = draw([node(1)] + [node(i, task="t.b") for i in siblings], [(1, i) for i in siblings])
    assert len(drawing.items) == 21


def test_collapse__siblings_differing_in_name_or_neighbours_stay_apart():
    siblings = list(range(2, 32))
    nodes = [node(1), node(99, task="t.other")]
    nodes += [node(i, task="t.b" if i != 5 else "t.c") for i in siblings]
    # Node 6 also feeds 99: different dependents.
    edges = [(1, i) for i in siblings] + [(6, 99)]
    items = by_id(draw(nodes, edges))
    assert "n5" in items and "n6" in items
    assert len(items["g2"].nodes) == 28


def test_collapse__box_state_is_the_most_telling_member_state():
    def box_state(states):
        nodes = [node(1)] + [node(i + 2, task="t.b", state=s) for i, s in enumerate(states)]
        items, _ = graph.collapse(graph.Graph(nodes, [(1, n["id"]) for n in nodes[1:]]), threshold=2)
        return items[1]

    assert box_state(["SUCCESS", "SUCCESS", "SUCCESS"]).state == "SUCCESS"
    assert box_state(["SUCCESS", "PENDING", "SUCCESS"]).state == "PENDING"
    assert box_state(["SUCCESS", "STARTED", "PENDING"]).state == "STARTED"
    box = box_state(["SUCCESS", "STARTED", "FAILURE", "SUCCESS"])
    assert box.state == "FAILURE"
    assert graph.counts_text(box) == "3/4 done, 1 running, 1 failed"
    assert graph.item_status(box) == {
        "state": "FAILURE", "text": "3/4 done, 1 running, 1 failed", "bar": graph.bar_width(3, 4),
    }


def test_collapse__ten_thousand_node_chained_groups_stay_small():
    """5 chained groups of 2,000 with joins between them draw as 5 boxes and 4 dots."""
    nodes, edges, pk = [], [], 0
    previous_join = None
    for g in range(5):
        members = list(range(pk + 1, pk + 2001))
        nodes += [node(i, task=f"t.step{g}") for i in members]
        if previous_join:
            edges += [(previous_join, i) for i in members]
        pk = members[-1] + 1
        if g < 4:
            nodes.append(node(pk, kind="join", task=""))
            edges += [(i, pk) for i in members]
            previous_join = pk
    drawing = draw(nodes, edges)
    assert len(nodes) == 10_004
    assert len(drawing.items) == 9 and len(drawing.edges) == 8
    assert [len(rank) for rank in drawing.ranks] == [1] * 9


def test_tooltip__task_args_state_duration_and_first_error_line():
    started = datetime(2026, 1, 1, tzinfo=timezone.utc)
    item = graph.Item(id="n1", kind="task", task_name="proj.build", nodes=[node(
        1, task="proj.build", state="FAILURE", signature={"args": ["x" * 500], "kwargs": {"k": 1}},
        started_at=started, finished_at=started + timedelta(seconds=2.5),
        error_head="ValueError: bad host\n\nTraceback (most recent call last):\n  ...", reason="",
    )])
    lines = graph.tooltip(item).splitlines()
    assert lines[0] == "proj.build"
    assert lines[1] == "state: FAILURE"
    assert lines[2].startswith("args: ('xxx") and len(lines[2]) == len("args: ") + graph.ARGS_CHARS
    assert lines[3] == "duration: 2.5 s"
    assert lines[4] == "error: ValueError: bad host"


@pytest.mark.django_db
def test_load__two_queries_whatever_the_size(django_assert_num_queries):
    wf = Workflow(name="load")
    wf.add_celery_canvas(chain(record.si("a"), group(record.si(i) for i in range(50)), record.si("z")))
    wf.apply_async()
    with django_assert_num_queries(2):
        loaded = graph.load(wf)
    assert len(loaded.nodes) == wf.nodes.count()
    assert len(loaded.edges) == 50 + 50 + 1  # a -> group, group -> join, join -> z


def test_label__short_task_name_with_arguments_truncated():
    def label(args):
        return graph.Item(id="n1", kind="task", task_name="proj.tasks.build",
                          nodes=[node(1, task="proj.tasks.build", signature={"args": args})]).label

    assert label(["web-1"]) == "build('web-1')"
    assert label([]) == "build"
    long = label(["a-very-long-host-name.example.com"])
    assert len(long) == graph.LABEL_CHARS and long.endswith("…")


# -- edges between boxes, never through them ------------------------------------------------------


def path_points(path, steps=48):
    """The points of an SVG path of M, H, L and C commands, each Bézier flattened into ``steps`` chords."""
    points = []
    for command, text in re.findall(r"([MLHC])([^MLHC]*)", path):
        numbers = [float(n) for n in text.replace(",", " ").split()]
        if command in "ML":
            points.append(tuple(numbers))
        elif command == "H":
            points.append((numbers[0], points[-1][1]))
        else:
            (x0, y0), (x1, y1, x2, y2, x3, y3) = points[-1], numbers
            for k in range(1, steps + 1):
                t = k / steps
                a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
                points.append((a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3))
    return points


def crosses(segment, box):
    """Whether a segment enters the inside of a box (touching its border is not crossing)."""
    (x0, y0), (x1, y1) = segment
    left, top, right, bottom = box
    low, high = 0.0, 1.0
    for p, q in ((-(x1 - x0), x0 - left), (x1 - x0, right - x0), (-(y1 - y0), y0 - top), (y1 - y0, bottom - y0)):
        if p == 0:
            if q <= 0:
                return False
            continue
        t = q / p
        if p < 0:
            low = max(low, t)
        else:
            high = min(high, t)
        if low >= high:
            return False
    return True


def boxes_crossed(drawing):
    """(source, target, box crossed) for every edge segment that passes through a box other than its ends."""
    columns = defaultdict(list)  # the boxes of each rank, looked at only by segments reaching that rank's x
    for item in drawing.items:
        columns[item.rank].append((item, (item.x, item.y, item.x + item.width, item.y + item.height)))
    spans = {rank: (min(b[0] for _, b in boxes), max(b[2] for _, b in boxes)) for rank, boxes in columns.items()}
    found = set()
    for edge in drawing.edges:
        points = path_points(edge.path)
        for segment in pairwise(points):
            low, high = sorted((segment[0][0], segment[1][0]))
            for rank, (left, right) in spans.items():
                if high <= left or low >= right:
                    continue
                for item, box in columns[rank]:
                    if item is not edge.source and item is not edge.target and crosses(segment, box):
                        found.add((edge.source.id, edge.target.id, item.id))
    return found


def test_crosses__the_geometry_of_the_check_itself():
    box = (10, 10, 20, 20)
    assert crosses(((0, 15), (30, 15)), box)
    assert crosses(((0, 0), (30, 30)), box)
    assert crosses(((12, 12), (13, 13)), box)  # inside
    assert not crosses(((0, 10), (30, 10)), box)  # along the border
    assert not crosses(((0, 0), (30, 5)), box)
    assert not crosses(((0, 15), (9, 15)), box)
    assert path_points("M0,0 H10 C15,0 15,10 20,10")[:2] == [(0, 0), (10, 0)]


@pytest.mark.django_db
@pytest.mark.parametrize("hosts", [1, 4, 12])
def test_layout__example_project_edges_pass_between_boxes(hosts):
    from example_project.demo.workflows import build_demo_workflow

    wf = build_demo_workflow(hosts=hosts).apply_async()
    drawing = graph.layout(*graph.collapse(graph.load(wf)))
    audit, notify = (next(i for i in drawing.items if i.task_name == name) for name in ("demo.audit", "demo.notify"))
    assert boxes_crossed(drawing) == set()
    (long_edge,) = [e for e in drawing.edges if (e.source, e.target) == (audit, notify)]
    assert len(long_edge.waypoints) == notify.rank - audit.rank - 1 >= 2


def random_dag(seed, size, joins=True):
    """A DAG of ``size`` nodes whose edges go from lower to higher ids, many of them long."""
    rng = random.Random(seed)
    nodes, edges = [], []
    for pk in range(1, size + 1):
        kind = "join" if joins and pk > 3 and rng.random() < 0.15 else "task"
        nodes.append(node(pk, task="" if kind == "join" else f"t.{rng.choice('abcdef')}", kind=kind))
        for dep in rng.sample(range(1, pk), min(pk - 1, rng.choice([0, 1, 1, 2, 3]))):
            edges.append((dep, pk))
    return nodes, edges


@pytest.mark.parametrize("seed", range(12))
def test_layout__random_dags_edges_pass_between_boxes(seed):
    nodes, edges = random_dag(seed, size=20 + 15 * seed)
    drawing = draw(nodes, edges)
    assert boxes_crossed(drawing) == set()
    assert any(edge.waypoints for edge in drawing.edges)


def test_layout__collapsed_groups_joins_and_callbacks_edges_pass_between_boxes():
    # root -> 30 builds (a box) -> join -> report, root -> audit -> notify, and report -> notify; a finalizer.
    builds = list(range(2, 32))
    nodes = [node(1, task="t.root")] + [node(i, task="t.build") for i in builds]
    nodes += [node(40, kind="join", task=""), node(41, task="t.report"), node(42, task="t.audit"),
              node(43, task="t.notify"), node(44, kind="finalizer", task="t.cleanup")]
    edges = [(1, i) for i in builds] + [(i, 40) for i in builds] + [(40, 41), (1, 42), (42, 43), (41, 43)]
    drawing = draw(nodes, edges)
    assert boxes_crossed(drawing) == set()
    (long_edge,) = [e for e in drawing.edges if (e.source.id, e.target.id) == ("n42", "n43")]
    assert [w.rank for w in long_edge.waypoints] == [2, 3]


def test_layout__a_long_edge_runs_through_a_free_slot_of_each_rank_it_crosses():
    # a -> b -> c -> d and a -> d: the shortcut takes a slot of its own in the ranks of b and c.
    drawing = draw([node(1), node(2), node(3), node(4)], [(1, 2), (2, 3), (3, 4), (1, 4)])
    (shortcut,) = [e for e in drawing.edges if (e.source.id, e.target.id) == ("n1", "n4")]
    items = by_id(drawing)
    assert [w.rank for w in shortcut.waypoints] == [1, 2]
    for waypoint, item in zip(shortcut.waypoints, (items["n2"], items["n3"]), strict=True):
        assert (waypoint.left, waypoint.right) == (item.x, item.x + BOX_WIDTH)
        # Below the box, half a gap clear of it, as level with the root as that allows.
        assert waypoint.y == item.y + BOX_HEIGHT + GAP_Y / 2 == items["n1"].y + BOX_HEIGHT / 2
    assert shortcut.path.count("C") == 3 and shortcut.path.count("H") == 2
    assert drawing.height == 2 * MARGIN + 2 * BOX_HEIGHT + GAP_Y
    assert boxes_crossed(drawing) == set()


def test_layout__long_edges_share_the_lane_of_their_source_or_target():
    # A chain of 12; the root feeds every node from the third on, and every node feeds the last.
    size = 12
    chain_edges = [(i, i + 1) for i in range(1, size)]
    fan_out = [(1, i) for i in range(3, size + 1)]
    fan_in = [(i, size) for i in range(2, size - 1)]
    drawing = draw([node(i, task=f"t.{i}") for i in range(1, size + 1)], chain_edges + fan_out + fan_in)
    waypoints = {id(w) for edge in drawing.edges for w in edge.waypoints}
    # One lane out of the root (ranks 1 to 10), one into the last node (ranks 2 to 10): not one per edge.
    assert len(waypoints) == (size - 2) + (size - 3)
    assert sum(len(edge.waypoints) for edge in drawing.edges) == 100
    assert boxes_crossed(drawing) == set()


def test_layout__waypoints_stay_within_their_budget_on_contrived_graphs():
    # Long edges sharing neither source nor target: s_i (rank i) -> t_i (rank size + i).
    size = 60
    spine = [(i, i + 1) for i in range(1, 2 * size)]
    long = [(i, size + i) for i in range(1, size)]
    drawing = draw([node(i, task=f"t.{i}") for i in range(1, 2 * size + 1)], spine + long)
    # What drawing the edges costs (a run per rank crossed) stays linear in the items and edges.
    runs = sum(len(edge.waypoints) for edge in drawing.edges)
    assert runs <= graph.LANES_PER_ELEMENT * (len(drawing.items) + len(drawing.edges)) < (size - 1) ** 2
    # Past the budget an edge is drawn direct, from box side to box side.
    direct = [e for e in drawing.edges if e.target.rank - e.source.rank > 1 and not e.waypoints]
    assert direct and all(e.path.count("C") == 1 for e in direct)
