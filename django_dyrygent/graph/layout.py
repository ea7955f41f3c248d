"""Lay a workflow's DAG out for the admin's server-side SVG.

Pure Python and deterministic, so it can be unit-tested by coordinates and
needs no JavaScript library or system binary:

1. ``load`` reads the nodes and edges with two bulk ``values()`` queries
   (the count of queries never depends on the size of the workflow);
2. ``collapse`` folds huge groups of interchangeable siblings (same task
   name, same dependencies, same dependents) into one box, so a
   10,000-node workflow stays readable and cheap to draw;
3. ``layout`` ranks items by their longest path from a root, gives an
   edge spanning several ranks a waypoint in each rank it crosses, orders
   each rank (boxes and waypoints) by the barycentre of its neighbours and
   places them on a grid; edges run straight across columns and curve in
   the gaps between them, so none passes through a box.

The admin's status endpoint runs ``load`` + ``collapse`` only (no layout):
item ids are stable, so the browser can recolour the picture in place.
What the drawing is made of (``Item``, ``Edge``, ``Waypoint``, sizes,
labels) is in ``items``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from django.db.models import F
from django.db.models.functions import Left, Right
from django.utils.html import escape
from django.utils.safestring import mark_safe

from ..querysets import key_wait
from ..serialization import error_line
from ..states import CALLBACK_KINDS, WAITING_KINDS, NodeKind, NodeState
from .items import (
    ARGS_CHARS,
    BOX_HEIGHT,
    BOX_WIDTH,
    DOT_RADIUS,
    ERROR_CHARS,
    FIT_WIDTH,
    GAP_X,
    GAP_Y,
    LABEL_CHARS,
    MARGIN,
    STATE_PRIORITY,
    Adjacency,
    Edge,
    Graph,
    Item,
    Layout,
    NodeRow,
    Run,
    Waypoint,
    call_label,
    counts_text,
    format_call,
    format_duration,
    node_names,
    short_task_name,
    shorten,
)

if TYPE_CHECKING:
    from django.utils.safestring import SafeString

    from ..models import Workflow

#: The names of ``dag_items`` are imported from here too (their usual path).
__all__ = [
    "ARGS_CHARS",
    "Adjacency",
    "BOX_HEIGHT",
    "BOX_WIDTH",
    "CALLBACK_KINDS",
    "COLLAPSE_THRESHOLD",
    "DOT_RADIUS",
    "ERROR_CHARS",
    "Edge",
    "FIT_WIDTH",
    "GAP_X",
    "GAP_Y",
    "Graph",
    "Item",
    "LABEL_CHARS",
    "LANES_PER_ELEMENT",
    "Layout",
    "MARGIN",
    "NodeRow",
    "STATE_PRIORITY",
    "SWEEPS",
    "Waypoint",
    "bar_width",
    "box_geometry",
    "call_label",
    "collapse",
    "counts_text",
    "error_line",
    "format_call",
    "format_duration",
    "item_status",
    "layout",
    "load",
    "node_names",
    "shape",
    "short_task_name",
    "shorten",
    "svg_markup",
    "tooltip",
]

#: A group of interchangeable siblings larger than this is drawn as one box.
COLLAPSE_THRESHOLD = 20
#: How many times each rank is re-ordered by barycentre.
SWEEPS = 2


# -- loading ---------------------------------------------------------------------------------


def load(workflow: Workflow, details: bool = True) -> Graph:
    """Nodes and edges of ``workflow`` in two queries.

    ``details`` adds what tooltips need (signature, timings, the start of the
    error); the status endpoint only needs states.
    """
    from ..models import WorkflowEdge, WorkflowNode

    fields = ["id", "task_name", "kind", "state", "position", "concurrency_key"]
    nodes = WorkflowNode.objects.filter(workflow_id=workflow.pk).order_by("position", "id")
    if details:
        nodes = nodes.annotate(
            error_head=Left(F("error"), ERROR_CHARS), error_tail=Right(F("error"), ERROR_CHARS),
        ).with_slots_taken()
        fields += ["task_id", "signature", "started_at", "finished_at", "error_head", "error_tail", "reason",
                   "concurrency_limit", "slots_taken"]
    edges = WorkflowEdge.objects.filter(workflow_id=workflow.pk).order_by("position", "id")
    return Graph(
        nodes=list(nodes.values(*fields)),
        edges=list(edges.values_list("dependency_id", "node_id")),
    )


# -- collapsing -------------------------------------------------------------------------------


def collapse(graph: Graph, threshold: int = COLLAPSE_THRESHOLD) -> tuple[list[Item], list[Edge]]:
    """Fold siblings into boxes; returns ``(items, item edges)`` in node order.

    Siblings fold together when they are plain task nodes with the same task
    name, the same dependencies and the same dependents, and there are more
    than ``threshold`` of them. Edges between items are de-duplicated.
    """
    deps = defaultdict(list)
    dependents = defaultdict(list)
    for dep, node in graph.edges:
        deps[node].append(dep)
        dependents[dep].append(node)

    groups = defaultdict(list)
    for node in graph.nodes:
        groups[_group_key(node, deps, dependents)].append(node)

    item_of = {}
    items = []
    for node in graph.nodes:
        if node["id"] in item_of:
            continue
        members = groups[_group_key(node, deps, dependents)]
        if len(members) <= threshold:
            members = [node]
        prefix = "g" if len(members) > 1 else "n"
        item = Item(id=f"{prefix}{node['id']}", nodes=members, kind=node["kind"], task_name=node["task_name"])
        for member in members:
            item_of[member["id"]] = item
        items.append(item)

    seen = set()
    edges = []
    for dep, node in graph.edges:
        source, target = item_of.get(dep), item_of.get(node)
        if source is None or target is None or (source.id, target.id) in seen:
            continue
        seen.add((source.id, target.id))
        source.children.append(target)
        target.parents.append(source)
        edges.append(Edge(source, target))
    return items, edges


def _group_key(node: NodeRow, deps: Adjacency, dependents: Adjacency) -> tuple[Any, ...]:
    if node["kind"] == NodeKind.TASK:
        return (node["task_name"], frozenset(deps[node["id"]]), frozenset(dependents[node["id"]]))
    return ("#", node["id"])


# -- layout -----------------------------------------------------------------------------------


def layout(items: list[Item], edges: list[Edge], sweeps: int = SWEEPS) -> Layout:
    """Place items left to right by rank, top to bottom by barycentre; route edges between boxes.

    Rank: longest path from a root (callbacks, which run once the workflow
    ended, go in a last column of their own). An edge spanning several ranks
    gets a waypoint in each rank it crosses (``_lanes``): a slot of that
    rank, ordered with the boxes, so the edge passes between boxes instead
    of through them. Order: the first sweep sorts every rank by the mean
    position of its neighbours on the left; each further sweep first sorts
    the roots by the mean position of their neighbours on the right, then
    the other ranks again, so roots feeding the same nodes end up side by
    side. Ties keep creation order. Each rank is centred vertically.
    """
    ranks = _rank(items)
    rows, left_of, right_of = _lanes(ranks, edges, len(items) + len(edges))
    for sweep in range(max(sweeps, 1)):
        if sweep and rows:
            _sort_rank(rows[0], lambda slot: [_centred(n, rows) for n in right_of[id(slot)]])
        for row in rows[1:]:
            _sort_rank(row, lambda slot: [_centred(n, rows) for n in left_of[id(slot)]])
    for rank in ranks:
        rank.sort(key=lambda item: item.order)
    tallest = max((len(r) for r in rows), default=0)
    pitch_y = BOX_HEIGHT + GAP_Y
    left: float = MARGIN
    columns = []
    for rank, row in zip(ranks, rows, strict=True):
        # A column of join dots only is as narrow as a dot.
        column = max(item.width for item in rank)
        offset = (tallest - len(row)) * pitch_y / 2
        for slot in row:
            top = MARGIN + offset + slot.order * pitch_y
            if isinstance(slot, Waypoint):
                slot.left, slot.right, slot.y = left, left + column, top + BOX_HEIGHT / 2
            else:
                slot.x = left + (column - slot.width) / 2
                slot.y = top + (BOX_HEIGHT - slot.height) / 2
        columns.append((left, left + column))
        left += column + GAP_X
    _straighten(rows, left_of)
    for edge in edges:
        if edge.target.rank - edge.source.rank == len(edge.waypoints) + 1:
            edge.runs = _runs(edge, columns)
    width = left - (GAP_X if ranks else 0) + MARGIN
    height = 2 * MARGIN + tallest * pitch_y - (GAP_Y if tallest else 0)
    return Layout(items=items, edges=edges, width=width, height=height, ranks=ranks)


#: Long edges cross at most this many ranks in all, per item and edge: drawing an edge costs one
#: run per rank it crosses. Past it (only in contrived graphs, many long edges sharing neither
#: source nor target) the remaining long edges are drawn direct, and the layout stays linear.
LANES_PER_ELEMENT = 3

Slot = Item | Waypoint


def _lanes(
    ranks: list[list[Item]], edges: list[Edge], size: int,
) -> tuple[list[list[Slot]], dict[int, list[Slot]], dict[int, list[Slot]]]:
    """Give long edges waypoints; return the rows (items and waypoints) and each slot's neighbours.

    A long edge joins the lane of its source, or that of its target when the
    target has more long edges coming in than the source has going out: a
    node fed from many ranks (a final notify) or feeding many (a fetch) has
    one lane, so the count of waypoints stays near the count of edges.
    """
    rows: list[list[Slot]] = [list(rank) for rank in ranks]
    for edge in edges:
        edge.waypoints, edge.runs = [], []
    long = [e for e in edges if e.target.rank - e.source.rank > 1]
    going_out = Counter(e.source.id for e in long)
    coming_in = Counter(e.target.id for e in long)
    lanes: dict[tuple[str, str], dict[int, Waypoint]] = {}
    budget = LANES_PER_ELEMENT * size
    for edge in long:
        source, target = edge.source, edge.target
        key = ("in", target.id) if coming_in[target.id] > going_out[source.id] else ("out", source.id)
        lane = lanes.setdefault(key, {})
        crossed = range(source.rank + 1, target.rank)
        if len(crossed) > budget:
            continue
        budget -= len(crossed)
        for r in crossed:
            if r not in lane:
                lane[r] = Waypoint(rank=r, order=len(rows[r]))
                rows[r].append(lane[r])
        edge.waypoints = [lane[r] for r in range(source.rank + 1, target.rank)]
    left_of: dict[int, list[Slot]] = defaultdict(list)
    right_of: dict[int, list[Slot]] = defaultdict(list)
    linked = set()
    for edge in edges:
        hops: list[Slot] = [edge.source, *edge.waypoints, edge.target]
        for a, b in pairwise(hops):
            if (id(a), id(b)) not in linked:
                linked.add((id(a), id(b)))
                right_of[id(a)].append(b)
                left_of[id(b)].append(a)
    return rows, left_of, right_of


def _straighten(rows: list[list[Slot]], left_of: dict[int, list[Slot]]) -> None:
    """Move each waypoint level with where its lane comes from, if its column has room there.

    Ranks are centred, so a lane's slots in a short rank sit off the line of
    the slots before them; a waypoint slides towards that line, but no closer
    than half a gap to the slots above and below it (their order is kept).
    """
    for row in rows[1:]:
        for index, slot in enumerate(row):
            if not isinstance(slot, Waypoint) or len(left_of[id(slot)]) != 1:
                continue
            low = _bottom(row[index - 1]) + GAP_Y / 2 if index else float("-inf")
            high = row[index + 1].y - GAP_Y / 2 if index + 1 < len(row) else float("inf")
            if low <= high:
                slot.y = min(max(_middle(left_of[id(slot)][0]), low), high)


def _bottom(slot: Slot) -> float:
    return slot.y if isinstance(slot, Waypoint) else slot.y + slot.height


def _middle(slot: Slot) -> float:
    return slot.y if isinstance(slot, Waypoint) else slot.y + slot.height / 2


def _runs(edge: Edge, columns: list[tuple[float, float]]) -> list[Run]:
    """Source side to its column's right edge, across each waypoint's column, target's column to its side."""
    source, target = edge.source, edge.target
    runs: list[Run] = [(source.x + source.width, columns[source.rank][1], _middle(source))]
    runs += [(w.left, w.right, w.y) for w in edge.waypoints]
    runs.append((columns[target.rank][0], target.x, _middle(target)))
    return runs


def _rank(items: list[Item]) -> list[list[Item]]:
    """Kahn's topological generations, taking the longest path to each item."""
    regular = [i for i in items if i.kind not in CALLBACK_KINDS]
    callbacks = [i for i in items if i.kind in CALLBACK_KINDS]
    waiting = {i.id: len(i.parents) for i in regular}
    frontier = [i for i in regular if not i.parents]
    placed = 0
    while frontier:
        following = []
        for item in frontier:
            placed += 1
            for child in item.children:
                child.rank = max(child.rank, item.rank + 1)
                waiting[child.id] -= 1
                if not waiting[child.id]:
                    following.append(child)
        frontier = following
    if placed != len(regular):
        raise ValueError("The workflow graph has a cycle; it cannot be laid out in ranks.")
    count = max((i.rank for i in regular), default=-1) + 1
    ranks: list[list[Item]] = [[] for _ in range(count)]
    for item in regular:
        ranks[item.rank].append(item)
    if callbacks:
        for item in callbacks:
            item.rank = count
        ranks.append(callbacks)
    for rank in ranks:
        for order, item in enumerate(rank):
            item.order = order
    return ranks


def _centred(slot: Slot, rows: list[list[Slot]]) -> float:
    """Position of a slot relative to the middle of its rank (ranks are drawn centred)."""
    return slot.order - (len(rows[slot.rank]) - 1) / 2


def _sort_rank(rank: list[Slot], neighbours: Callable[[Slot], list[float]]) -> None:
    def key(item: Slot) -> tuple[float, int]:
        points = neighbours(item)
        centre = sum(points) / len(points) if points else _centred_self(item, rank)
        return (centre, item.order)

    rank.sort(key=key)
    for order, item in enumerate(rank):
        item.order = order


def _centred_self(item: Slot, rank: list[Slot]) -> float:
    return item.order - (len(rank) - 1) / 2


# -- presentation -------------------------------------------------------------------------------


def tooltip(item: Item) -> str:
    """Plain text (escaped by the template) shown when hovering a node."""
    if item.is_group:
        counts = item.counts
        lines = [f"{len(item.nodes)} × {item.task_name or item.kind}"]
        lines += [f"{state}: {counts[state]}" for state in STATE_PRIORITY if counts.get(state)]
        lines.append("Click to list these nodes.")
        return "\n".join(lines)
    node = item.node
    lines = [node["task_name"] or str(NodeKind(node["kind"]).label)]
    lines.append(f"state: {node['state']}")
    signature = node.get("signature") or {}
    if node["kind"] == NodeKind.TASK or signature.get("args") or signature.get("kwargs"):
        lines.append(f"args: {shorten(format_call(signature), ARGS_CHARS)}")
    started, finished = node.get("started_at"), node.get("finished_at")
    if started and finished:
        lines.append(f"duration: {format_duration(finished - started)}")
    error = error_line(node.get("error_head"), node.get("error_tail"))
    if node.get("concurrency_key") and node["state"] == NodeState.WAITING and "slots_taken" in node:
        lines.append(key_wait(node["concurrency_key"], node.get("concurrency_limit"), node["slots_taken"]))
    elif error:
        lines.append(f"error: {shorten(error, ARGS_CHARS)}")
    elif node.get("reason") and node["state"] != NodeState.SUCCESS:
        lines.append(f"reason: {shorten(node['reason'], ARGS_CHARS)}")
    return "\n".join(lines)


def shape(items: list[Item], edges: list[Edge]) -> str:
    """Changes when nodes or edges appear (a fan-out expanded): the picture must then be redrawn."""
    return f"{sum(len(i.nodes) for i in items)}-{len(items)}-{len(edges)}"


def box_geometry(item: Item) -> dict[str, str]:
    """Coordinates the SVG template prints, as strings (never localized: "12,5" breaks SVG)."""
    sub = bool(item.sublabel)
    geometry = {
        "x": f"{item.x:g}", "y": f"{item.y:g}", "w": f"{item.width:g}", "h": f"{item.height:g}",
        "cx": f"{item.x + item.width / 2:g}", "cy": f"{item.y + item.height / 2:g}", "r": f"{DOT_RADIUS:g}",
        "tx": f"{item.x + 8:g}", "ty": f"{item.y + (14 if sub else 21):g}", "sy": f"{item.y + 27:g}",
    }
    if item.is_group:
        geometry["bar_x"] = f"{item.x + 1:g}"
        geometry["bar_w"] = f"{bar_width(item.done, len(item.nodes)):g}"
    elif item.kind == NodeKind.SUBWORKFLOW:  # the inner box, 3 units inside
        geometry.update(ix=f"{item.x + 3:g}", iy=f"{item.y + 3:g}", iw=f"{item.width - 6:g}",
                        ih=f"{item.height - 6:g}")
    return geometry


def svg_markup(drawing: Layout, url_for: Callable[[Item], str]) -> SafeString:
    """The edges and nodes of the SVG, escaped here rather than in a template loop.

    A Django template loop costs about 0.1 ms per node; a 10,000-node
    drawing would spend a second in it. Every string that comes from user
    data (task names, arguments, errors, states) goes through ``escape``.
    ``url_for(item)`` gives the link of an item.
    """
    parts = ['<g class="dy-edges">']
    parts += [f'<path d="{edge.path}"/>' for edge in drawing.edges]
    parts.append('</g><g class="dy-nodes">')
    for item in drawing.items:
        g = box_geometry(item)
        classes = f"dy-node dy-s-{escape(item.state)}"
        if item.is_dot:
            classes += " dy-dot"
        if item.is_group:
            classes += " dy-group"
        elif item.kind in (*WAITING_KINDS, NodeKind.BRANCH, NodeKind.SUBWORKFLOW):
            classes += f" dy-{item.kind}"
        elif item.node.get("concurrency_key"):
            classes += " dy-keyed"
        parts.append(
            f'<a href="{escape(url_for(item))}" id="dy-{item.id}" class="{classes}">'
            f"<title>{escape(tooltip(item))}</title>"
        )
        if item.is_dot:
            parts.append(f'<circle cx="{g["cx"]}" cy="{g["cy"]}" r="{g["r"]}"/>')
        else:
            parts.append(f'<rect x="{g["x"]}" y="{g["y"]}" width="{g["w"]}" height="{g["h"]}" rx="5"/>')
            if item.is_group:
                parts.append(
                    f'<rect class="dy-bar" x="{g["bar_x"]}" y="{g["y"]}" width="{g["bar_w"]}" height="3"/>'
                )
            elif item.kind == NodeKind.SUBWORKFLOW:  # a box in a box: a whole workflow runs there
                parts.append(f'<rect class="dy-inner" x="{g["ix"]}" y="{g["iy"]}" width="{g["iw"]}" '
                             f'height="{g["ih"]}" rx="3"/>')
            parts.append(f'<text x="{g["tx"]}" y="{g["ty"]}">{escape(item.label)}</text>')
            sublabel = item.sublabel
            if sublabel:
                parts.append(f'<text class="dy-sub" x="{g["tx"]}" y="{g["sy"]}">{escape(sublabel)}</text>')
        parts.append("</a>")
    parts.append("</g>")
    return mark_safe("".join(parts))  # noqa: S308 -- every user string above is escaped


def bar_width(done: int, total: int) -> float:
    return round((BOX_WIDTH - 2) * done / total, 1) if total else 0


def item_status(item: Item) -> dict[str, Any]:
    """What the status endpoint sends for one item; the browser recolours from it."""
    status: dict[str, Any] = {"state": item.state}
    if item.is_group:
        status["text"] = counts_text(item)
        status["bar"] = bar_width(item.done, len(item.nodes))
    return status
