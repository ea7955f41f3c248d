"""What ran when: a Gantt of a workflow's nodes (queued, started, finished), drawn on the server.

The DAG says what depends on what; this says where the time went. One
``values()`` query reads the task nodes (joins have no time of their own),
and the SVG is built here with every user string escaped, like the DAG
(``layout.svg_markup``), so a 2,000-node workflow costs one query and a few
milliseconds of string building, not a template loop per node.

A workflow of up to ``ROW_LIMIT`` nodes gets a row per node. A larger one is
collapsed to a row per task name: the row's bar runs from the first queue
to the last finish, its darker part from the first start, coloured by the
most urgent state of its members (``items.STATE_PRIORITY``). Zooming into a
task name (``group``) shows its nodes, ``ROW_LIMIT`` per page.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from ..states import NodeKind
from .items import STATE_PRIORITY, NodeRow, format_duration, short_task_name, shorten

if TYPE_CHECKING:
    from ..models import Workflow

#: Rows drawn one per node up to this many; beyond, one row per task name (or a page of a zoomed one).
ROW_LIMIT = 150
LABEL_WIDTH = 230
CHART_WIDTH = 900
ROW_HEIGHT = 18
BAR_HEIGHT = 12
AXIS_HEIGHT = 22
#: A group row's concurrency profile: this many columns across the chart.
PROFILE_BINS = 300
#: Axis steps, seconds: the first that leaves at least ``MIN_TICK_GAP`` pixels between ticks.
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
MIN_TICK_GAP = 70
FIELDS = ("id", "task_name", "kind", "state", "position", "queued_at", "started_at", "finished_at", "attempts")


@dataclass
class Row:
    """One line of the chart: a node, or every node of one task name."""

    label: str
    state: str
    queued: datetime | None
    started: datetime | None
    finished: datetime | None
    #: The node's id (a node row) or the task name (a group row, zoomable).
    key: Any
    is_group: bool = False
    states: Counter[str] = field(default_factory=Counter)
    durations: list[timedelta] = field(default_factory=list)
    attempts: int = 1
    #: A group's members' runs (start, end or None while running): drawn as a concurrency profile.
    runs: list[tuple[datetime, datetime | None]] = field(default_factory=list)


@dataclass
class Timeline:
    """The rows to draw and the time span they share."""

    rows: list[Row]
    start: datetime | None
    end: datetime | None
    #: Nodes the chart stands for, and whether rows are task names.
    total: int = 0
    grouped: bool = False
    group: str | None = None
    page: int = 1
    pages: int = 1

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max((self.end - self.start).total_seconds(), 1.0)


def load(workflow: Workflow, group: str | None = None, page: int = 1, row_limit: int | None = None) -> Timeline:
    """Read the task nodes of ``workflow`` in one query and arrange them in rows."""
    row_limit = row_limit or ROW_LIMIT
    nodes = list(
        workflow.nodes.exclude(kind=NodeKind.JOIN).order_by("position").values(*FIELDS)
    )
    now = timezone.now()
    if group is not None:
        nodes = [n for n in nodes if n["task_name"] == group]
    grouped = group is None and len(nodes) > row_limit
    if grouped:
        rows = _group_rows(nodes)
        pages, page = 1, 1
    else:
        pages = max(1, math.ceil(len(nodes) / row_limit))
        page = min(max(page, 1), pages)
        rows = [_node_row(n) for n in nodes[(page - 1) * row_limit: page * row_limit]]
    starts = [t for r in rows for t in (r.queued, r.started) if t]
    ends = [r.finished or now for r in rows if r.queued or r.started]
    return Timeline(
        rows=rows, start=min(starts) if starts else None, end=max(ends) if ends else None,
        total=len(nodes), grouped=grouped, group=group, page=page, pages=pages,
    )


def _node_row(node: NodeRow) -> Row:
    label = short_task_name(node["task_name"]) if node["task_name"] else str(node["kind"])
    return Row(
        label=f"{node['position']}. {label}", state=node["state"], queued=node["queued_at"],
        started=node["started_at"], finished=node["finished_at"], key=node["id"], attempts=node["attempts"],
        durations=[node["finished_at"] - node["started_at"]] if node["started_at"] and node["finished_at"] else [],
    )


def _group_rows(nodes: Sequence[NodeRow]) -> list[Row]:
    rows: dict[str, Row] = {}
    for node in nodes:
        name = node["task_name"] or str(node["kind"])
        row = rows.get(name)
        if row is None:
            row = rows[name] = Row(label=short_task_name(name), state="", queued=None, started=None,
                                   finished=None, key=name, is_group=True, attempts=0)
        row.states[node["state"]] += 1
        row.attempts += node["attempts"]
        row.queued = _earliest(row.queued, node["queued_at"])
        row.started = _earliest(row.started, node["started_at"])
        if node["finished_at"] and (row.finished is None or node["finished_at"] > row.finished):
            row.finished = node["finished_at"]
        if node["started_at"]:
            row.runs.append((node["started_at"], node["finished_at"]))
            if node["finished_at"]:
                row.durations.append(node["finished_at"] - node["started_at"])
    for row in rows.values():
        row.state = next((s for s in STATE_PRIORITY if row.states[s]), "")
        row.label = f"{row.label} ×{sum(row.states.values())}"
        if any(row.states[s] for s in ("PENDING", "QUEUED", "STARTED", "RETRY")):
            row.finished = None  # still moving: the bar runs to now
    return list(rows.values())


def _earliest(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current


def tick_step(seconds: float, width: int = CHART_WIDTH) -> int:
    """The axis step: the smallest of ``TICK_STEPS`` that keeps ticks ``MIN_TICK_GAP`` px apart."""
    for step in TICK_STEPS:
        if width * step / seconds >= MIN_TICK_GAP:
            return step
    return TICK_STEPS[-1]


def _clock(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _offset(step: int, index: int) -> str:
    total = step * index
    if total < 60:
        return f"+{total}s"
    if total < 3600:
        return f"+{total // 60}m" + (f"{total % 60:02d}s" if total % 60 else "")
    return f"+{total // 3600}h" + (f"{total % 3600 // 60:02d}m" if total % 3600 else "")


def tooltip(row: Row) -> str:
    """Times to the second and durations; a group adds its counts by state and its slowest node."""
    lines = [row.label]
    if row.is_group:
        lines.append(", ".join(f"{state.lower()}: {n}" for state, n in sorted(row.states.items())))
    else:
        lines.append(f"state: {row.state.lower()}" + (f", attempt {row.attempts}" if row.attempts > 1 else ""))
    lines.append(f"queued: {_clock(row.queued)}")
    lines.append(f"started: {_clock(row.started)}")
    lines.append(f"finished: {_clock(row.finished)}")
    if row.queued and row.started:
        lines.append(f"waited: {format_duration(row.started - row.queued)}")
    if row.durations:
        if row.is_group:
            ordered = sorted(row.durations)
            lines.append(f"ran: median {format_duration(ordered[len(ordered) // 2])}, "
                         f"longest {format_duration(ordered[-1])}")
        else:
            lines.append(f"ran: {format_duration(row.durations[0])}")
    return "\n".join(lines)


def svg_markup(timeline: Timeline, url_for: Callable[[Row], str]) -> SafeString:
    """The whole chart as one ``<svg>``: axis, then a row per ``Row`` (label, wait bar, run bar).

    x is proportional to time from the chart's start; a node not yet
    finished runs to the chart's end (now, for a live workflow). Every
    user string (task names) goes through ``escape``.
    """
    height = AXIS_HEIGHT + ROW_HEIGHT * len(timeline.rows) + 4
    width = LABEL_WIDTH + CHART_WIDTH + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dy-gantt" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    seconds = timeline.seconds
    if timeline.start is not None:
        step = tick_step(seconds)
        parts.append('<g class="dy-axis">')
        for index in range(int(seconds // step) + 1):
            x = LABEL_WIDTH + CHART_WIDTH * index * step / seconds
            parts.append(f'<line x1="{x:.1f}" y1="{AXIS_HEIGHT - 4}" x2="{x:.1f}" y2="{height}"/>'
                         f'<text x="{x + 2:.1f}" y="{AXIS_HEIGHT - 8}">{_offset(step, index)}</text>')
        parts.append("</g>")

    def x_of(moment: datetime) -> float:
        assert timeline.start is not None
        return LABEL_WIDTH + CHART_WIDTH * (moment - timeline.start).total_seconds() / seconds

    parts.append('<g class="dy-rows">')
    for index, row in enumerate(timeline.rows):
        y = AXIS_HEIGHT + index * ROW_HEIGHT
        classes = f"dy-row dy-s-{escape(row.state)}" + (" dy-group" if row.is_group else "")
        parts.append(f'<a href="{escape(url_for(row))}" class="{classes}"><title>{escape(tooltip(row))}</title>'
                     f'<rect class="dy-hit" x="0" y="{y}" width="{width}" height="{ROW_HEIGHT}"/>'
                     f'<text x="4" y="{y + 13}">{escape(shorten(row.label, 34))}</text>')
        end = row.finished or timeline.end
        bar_y = y + (ROW_HEIGHT - BAR_HEIGHT) / 2
        if row.queued and end:
            x0, x1 = x_of(row.queued), x_of(row.started or end)
            parts.append(f'<rect class="dy-wait" x="{x0:.1f}" y="{bar_y:.1f}" width="{max(x1 - x0, 1):.1f}" '
                         f'height="{BAR_HEIGHT}"/>')
        if row.is_group and row.runs and timeline.end:
            parts.append(_profile(row, x_of, timeline, bar_y))
        elif row.started and end:
            x0, x1 = x_of(row.started), x_of(end)
            parts.append(f'<rect class="dy-run" x="{x0:.1f}" y="{bar_y:.1f}" width="{max(x1 - x0, 2):.1f}" '
                         f'height="{BAR_HEIGHT}"/>')
        parts.append("</a>")
    parts.append("</g></svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- every user string above is escaped


def _profile(row: Row, x_of: Callable[[datetime], float], timeline: Timeline, bar_y: float) -> str:
    """How many members of a group ran at each moment: one column per bin, its height the share of the peak.

    Bins are filled with a difference array, so the cost is O(members + bins)
    however long each run was.
    """
    assert timeline.end is not None
    width = CHART_WIDTH / PROFILE_BINS
    delta = [0] * (PROFILE_BINS + 1)
    for started, finished in row.runs:
        first = int((x_of(started) - LABEL_WIDTH) / width)
        last = int((x_of(finished or timeline.end) - LABEL_WIDTH) / width)
        delta[min(max(first, 0), PROFILE_BINS - 1)] += 1
        delta[min(max(last, 0), PROFILE_BINS - 1) + 1] -= 1
    running, counts = 0, []
    for change in delta[:PROFILE_BINS]:
        running += change
        counts.append(running)
    peak = max(counts) or 1
    columns = [
        f'<rect x="{LABEL_WIDTH + i * width:.1f}" y="{bar_y + BAR_HEIGHT * (1 - n / peak):.1f}" '
        f'width="{width:.2f}" height="{BAR_HEIGHT * n / peak:.1f}"/>'
        for i, n in enumerate(counts) if n
    ]
    return f'<g class="dy-run dy-profile"><title>{peak} at most at once</title>{"".join(columns)}</g>'
