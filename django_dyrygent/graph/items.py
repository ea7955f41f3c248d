"""What a drawn DAG is made of: the rows, the boxes (``Item``) and edges, their sizes and labels.

Apart from ``graph`` (loading, collapsing, laying out, the SVG), which
imports every name here and is their usual path, because these are the
shared vocabulary: the admin's lists name nodes with ``node_names`` and
``shorten`` without drawing anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..states import CALLBACK_KINDS, NODE_ACTIVE, NODE_FINAL, WAITING_KINDS, NodeKind, NodeState

#: One node as ``values()`` returns it (id, state, kind, task_name, ...).
NodeRow = dict[str, Any]
#: node id -> ids of its dependencies (or dependents).
Adjacency = dict[Any, list[Any]]

BOX_WIDTH = 168
BOX_HEIGHT = 34
GAP_X = 56
GAP_Y = 14
MARGIN = 12
DOT_RADIUS = 5
LABEL_CHARS = 23
#: Drawings up to this width are scaled down to fit the page; wider ones scroll.
FIT_WIDTH = 2400
ARGS_CHARS = 120
ERROR_CHARS = 300

#: Aggregate state of a box: the first of these its members are in.
#: Problems first, then what is moving, then what waits, then what is done.
STATE_PRIORITY = (
    NodeState.FAILURE,
    NodeState.UPSTREAM_FAILED,
    NodeState.CANCELED,
    NodeState.RETRY,
    NodeState.STARTED,
    NodeState.WAITING,
    NodeState.QUEUED,
    NodeState.PENDING,
    NodeState.SKIPPED,
    NodeState.SUCCESS,
)


@dataclass
class Graph:
    """The nodes (dicts from ``values()``) and edges (dependency id, node id) of one workflow."""

    nodes: list[NodeRow]
    edges: list[tuple[Any, Any]]


@dataclass
class Item:
    """One drawn box: a single node, or a collapsed group of siblings."""

    id: str
    nodes: list[NodeRow]
    kind: str
    task_name: str
    rank: int = 0
    order: int = 0
    x: float = 0
    y: float = 0
    parents: list[Item] = field(default_factory=list)
    children: list[Item] = field(default_factory=list)

    @property
    def is_group(self) -> bool:
        return len(self.nodes) > 1

    @property
    def is_dot(self) -> bool:
        return not self.is_group and self.kind == NodeKind.JOIN

    @property
    def node(self) -> NodeRow:
        return self.nodes[0]

    @property
    def counts(self) -> Counter[str]:
        return Counter(n["state"] for n in self.nodes)

    @property
    def state(self) -> str:
        """The node's state, or for a group the most telling state of its members."""
        if not self.is_group:
            return self.node["state"]
        counts = self.counts
        return next(s for s in STATE_PRIORITY if counts.get(s))

    @property
    def done(self) -> int:
        return sum(1 for n in self.nodes if n["state"] in NODE_FINAL)

    @property
    def width(self) -> float:
        return 2 * DOT_RADIUS if self.is_dot else BOX_WIDTH

    @property
    def height(self) -> float:
        return 2 * DOT_RADIUS if self.is_dot else BOX_HEIGHT

    @property
    def label(self) -> str:
        name = self.task_name or self.kind
        if self.is_group:
            return shorten(f"{len(self.nodes)} × {short_task_name(name)}", LABEL_CHARS)
        return shorten(call_label(self.node), LABEL_CHARS)

    @property
    def sublabel(self) -> str:
        """Second line of a box: progress of a group, the kind of a special node."""
        if self.is_group:
            return counts_text(self)
        if self.kind in (NodeKind.MAP, NodeKind.BRANCH, NodeKind.SUBWORKFLOW, *CALLBACK_KINDS, *WAITING_KINDS):
            return str(NodeKind(self.kind).label).lower()
        key = self.node.get("concurrency_key")
        return shorten(f"key {key}", LABEL_CHARS) if key else ""


@dataclass(eq=False)
class Waypoint:
    """Where a long edge crosses a rank: a slot of that rank's column, kept free of boxes.

    Edges from one source (or into one target) share their waypoints, so a
    node feeding many distant nodes costs one lane, not one per edge.
    """

    rank: int
    order: int = 0
    y: float = 0
    #: The column the lane crosses: from ``left`` to ``right``.
    left: float = 0
    right: float = 0


#: One horizontal run of an edge: (x where it enters, x where it leaves, y).
Run = tuple[float, float, float]


@dataclass
class Edge:
    source: Item
    target: Item
    #: The ranks in between, in order; empty for an edge between neighbouring ranks.
    waypoints: list[Waypoint] = field(default_factory=list)
    #: Horizontal runs through the columns (set by the layout); cubic Béziers join them in the gaps.
    runs: list[Run] = field(default_factory=list)

    @property
    def path(self) -> str:
        """Runs through the columns joined by cubic Béziers in the gaps between columns.

        Every column is crossed straight, on the source's or target's own row
        or on a waypoint's free slot, and every curve stays within the gap
        between two columns, where no box is: the edge never crosses a box.
        """
        runs = self.runs or [
            (self.source.x + self.source.width,) * 2 + (self.source.y + self.source.height / 2,),
            (self.target.x,) * 2 + (self.target.y + self.target.height / 2,),
        ]
        x1, out, y1 = runs[0]
        parts = [f"M{x1:g},{y1:g}"]
        if out != x1:
            parts.append(f"H{out:g}")
        for enter, leave, y2 in runs[1:]:
            bend = max((enter - out) / 2, GAP_X / 2)
            parts.append(f"C{out + bend:g},{y1:g} {enter - bend:g},{y2:g} {enter:g},{y2:g}")
            if leave != enter:
                parts.append(f"H{leave:g}")
            out, y1 = leave, y2
        return " ".join(parts)


@dataclass
class Layout:
    items: list[Item]
    edges: list[Edge]
    width: float
    height: float
    ranks: list[list[Item]]

    @property
    def fits(self) -> bool:
        return self.width <= FIT_WIDTH


def shorten(text: object, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_task_name(name: str) -> str:
    """``proj.tasks.build`` -> ``build``: the module path rarely fits in a box (the tooltip has it all)."""
    return name.rsplit(".", 1)[-1] if name else name


def call_label(node: NodeRow) -> str:
    """``record('build-1')``: the first arguments tell siblings apart, the module path is left out."""
    label = short_task_name(node["task_name"] or node["kind"])
    args = (node.get("signature") or {}).get("args")
    if args and node["kind"] != NodeKind.JOIN:
        label += "(" + ", ".join(repr(a) for a in args) + ")"
    return label


def node_names(node: NodeRow) -> tuple[str, str]:
    """(short label, full title) naming a node in lists: a join by its position, never by a bare UUID."""
    if node["kind"] == NodeKind.JOIN:
        return f"join #{node['position']}", f"join node #{node['position']} ({node['task_id']})"
    label = shorten(call_label(node), ARGS_CHARS // 2)
    name = node["task_name"] or str(NodeKind(node["kind"]).label)
    return label, f"{name}{format_call(node.get('signature') or {})} ({node['task_id']})"


def counts_text(item: Item) -> str:
    counts = item.counts
    parts = [f"{item.done}/{len(item.nodes)} done"]
    failed = sum(counts.get(s, 0) for s in (NodeState.FAILURE, NodeState.UPSTREAM_FAILED, NodeState.CANCELED))
    active = sum(counts.get(s, 0) for s in NODE_ACTIVE)
    if active:
        parts.append(f"{active} running")
    if failed:
        parts.append(f"{failed} failed")
    return ", ".join(parts)


def format_call(signature: dict[str, Any]) -> str:
    parts = [repr(a) for a in signature.get("args") or []]
    parts += [f"{k}={v!r}" for k, v in (signature.get("kwargs") or {}).items()]
    return "(" + ", ".join(parts) + ")"


def format_duration(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
