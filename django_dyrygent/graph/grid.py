"""Past runs of one catalogue definition side by side: runs as columns, nodes as rows, coloured by state.

A definition builds the same shape run after run, so a node's position
names "the same step" across runs: the grid shows at a glance which step
fails since when, and which run was slow. Two queries whatever the size (the
runs, then their task nodes); the SVG is built here with every user string
escaped, like the DAG and the timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from ..models import Workflow, WorkflowNode
from ..states import NodeKind
from .items import format_duration, short_task_name, shorten

#: Runs shown, newest on the right.
RUNS = 25
#: Steps (rows) shown; a definition with more shows the first ones and says so.
ROW_LIMIT = 200
CELL = 14
GAP = 2
LABEL_WIDTH = 230
HEADER_HEIGHT = 22


@dataclass
class Grid:
    """Runs (oldest first), the steps as (position, label), and the cell of each (run, position)."""

    definition: str
    runs: list[dict[str, Any]]
    steps: list[tuple[int, str]]
    cells: dict[tuple[Any, int], dict[str, Any]] = field(default_factory=dict)
    truncated: int = 0


def load(definition: str, runs: int = RUNS, row_limit: int = ROW_LIMIT) -> Grid:
    """The last ``runs`` runs of ``definition`` and their task nodes, in two queries."""
    recent: list[dict[str, Any]] = [
        dict(run) for run in Workflow.objects.filter(definition=definition).order_by("-created_at")
        .values("id", "name", "state", "created_at", "started_at", "finished_at", "trigger", "error")[:runs]
    ]
    recent.reverse()
    nodes = (
        WorkflowNode.objects.filter(workflow_id__in=[r["id"] for r in recent]).exclude(kind=NodeKind.JOIN)
        .values("id", "workflow_id", "position", "task_name", "state", "started_at", "finished_at", "attempts")
    )
    grid = Grid(definition=definition, runs=recent, steps=[])
    by_run: dict[Any, list[dict[str, Any]]] = {run["id"]: [] for run in recent}
    for node in nodes:
        cell: dict[str, Any] = dict(node)
        grid.cells[(node["workflow_id"], node["position"])] = cell
        by_run[node["workflow_id"]].append(cell)
    # A step is named after its node in the newest run that has it: shapes can change between runs.
    labels: dict[int, str] = {}
    for run in reversed(recent):
        for cell in by_run[run["id"]]:
            labels.setdefault(cell["position"], short_task_name(cell["task_name"] or "?"))
    positions = sorted(labels)
    grid.truncated = max(0, len(positions) - row_limit)
    grid.steps = [(p, labels[p]) for p in positions[:row_limit]]
    return grid


def _run_duration(run: dict[str, Any]) -> timedelta | None:
    if not run["started_at"]:
        return None
    return (run["finished_at"] or timezone.now()) - run["started_at"]


def run_tooltip(run: dict[str, Any]) -> str:
    lines = [f"{run['name'] or run['id']}", f"state: {run['state'].lower()}",
             f"created: {timezone.localtime(run['created_at']):%Y-%m-%d %H:%M:%S}",
             f"duration: {format_duration(_run_duration(run))}"]
    if run["trigger"]:
        lines.append(f"trigger: {run['trigger']}")
    if run["error"]:
        lines.append(f"error: {shorten(run['error'], 200)}")
    return "\n".join(lines)


def cell_tooltip(label: str, node: dict[str, Any]) -> str:
    lines = [f"{node['position']}. {label}", f"state: {node['state'].lower()}"]
    if node["started_at"] and node["finished_at"]:
        lines.append(f"ran: {format_duration(node['finished_at'] - node['started_at'])}")
    if node["attempts"] > 1:
        lines.append(f"attempts: {node['attempts']}")
    return "\n".join(lines)


def svg_markup(grid: Grid, run_url: Callable[[Any], str], node_url: Callable[[Any], str]) -> SafeString:
    """A header row of run states, then a row per step; a missing cell (the run had no such step) is blank."""
    pitch = CELL + GAP
    width = LABEL_WIDTH + pitch * len(grid.runs) + 4
    height = HEADER_HEIGHT + pitch * len(grid.steps) + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dy-grid" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for column, run in enumerate(grid.runs):
        x = LABEL_WIDTH + column * pitch
        parts.append(f'<a href="{escape(run_url(run["id"]))}" class="dy-s-{escape(run["state"])}">'
                     f'<title>{escape(run_tooltip(run))}</title>'
                     f'<rect class="dy-run-cell" x="{x}" y="2" width="{CELL}" height="{HEADER_HEIGHT - 6}" '
                     f'rx="3"/></a>')
    for row, (position, label) in enumerate(grid.steps):
        y = HEADER_HEIGHT + row * pitch
        parts.append(f'<text x="4" y="{y + CELL - 3}">{escape(shorten(f"{position}. {label}", 34))}</text>')
        for column, run in enumerate(grid.runs):
            node = grid.cells.get((run["id"], position))
            if node is None:
                continue
            x = LABEL_WIDTH + column * pitch
            parts.append(f'<a href="{escape(node_url(node["id"]))}" class="dy-s-{escape(node["state"])}">'
                         f'<title>{escape(cell_tooltip(label, node))}</title>'
                         f'<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" rx="2"/></a>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- every user string above is escaped
