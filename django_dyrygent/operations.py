"""Operator helpers behind the ``dyrygent_*`` management commands.

Plain functions so the commands stay thin and the same logic can be called
from a view, a task or a shell. They raise ``ValueError`` / ``LookupError``
with a message meant for a person; the commands turn those into
``CommandError``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.db import transaction
from django.db.models import Count, Max, Min, Q

from .models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from .states import WAITING_KINDS, WORKFLOW_FINAL, NodeKind

if TYPE_CHECKING:
    from .graph.layout import Item
    from .querysets import WorkflowQuerySet

#: JSON-ready data: what the commands print and ``graph_to_*`` render.
Data = dict[str, Any]

logger = logging.getLogger("django_dyrygent.commands")

#: Below this many nodes ``dyrygent_status`` lists every node; above, it groups them.
NODE_TABLE_LIMIT = 50
#: Shortest id prefix accepted: 8 hex digits make an accidental match unlikely.
MIN_PREFIX = 8

_HEX = re.compile(r"^[0-9a-f]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# -- finding a workflow ------------------------------------------------------------------------


def _hyphenate(hex_prefix: str) -> str:
    """Put the hyphens back where a UUID's text form has them (8-4-4-4-12).

    PostgreSQL compares the text form of a native uuid (with hyphens); SQLite
    and MySQL store 32 hex digits and Django strips hyphens from the lookup
    value there, so the hyphenated form matches on every backend.
    """
    out, pos = [], 0
    for size in (8, 4, 4, 4, 12):
        part = hex_prefix[pos:pos + size]
        if not part:
            break
        out.append(part)
        pos += size
    return "-".join(out)


def resolve_workflow(ident: object) -> Workflow:
    """The workflow named by a full UUID or a unique prefix of at least 8 hex digits.

    Raises ``LookupError`` for an unknown or ambiguous id and ``ValueError``
    for something that cannot be a workflow id at all.
    """
    text = str(ident).strip().lower()
    digits = text.replace("-", "")
    if not digits or not _HEX.match(digits) or len(digits) > 32:
        raise ValueError(
            f"{ident!r} is not a workflow id: give the UUID or at least its first "
            f"{MIN_PREFIX} hex digits."
        )
    if len(digits) == 32:
        wf = Workflow.objects.filter(pk=_hyphenate(digits)).first()
        if wf is None:
            raise LookupError(f"No workflow with id {_hyphenate(digits)}.")
        return wf
    if len(digits) < MIN_PREFIX:
        raise ValueError(
            f"Workflow id prefix {ident!r} is too short: give at least {MIN_PREFIX} hex digits."
        )
    matches = list(Workflow.objects.filter(id__startswith=_hyphenate(digits)).order_by("created_at")[:6])
    if not matches:
        raise LookupError(f"No workflow id starts with {ident!r}.")
    if len(matches) > 1:
        shown = ", ".join(str(m.pk) for m in matches[:5])
        more = " and more" if len(matches) > 5 else ""
        raise LookupError(
            f"Workflow id prefix {ident!r} is ambiguous: it matches {shown}{more}. Give more digits."
        )
    return matches[0]


# -- durations ----------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"3600s"`` (and ``"2w"``) -> timedelta."""
    match = _DURATION.match(str(text).lower())
    if not match:
        raise ValueError(
            f"Invalid duration {text!r}: use a number followed by s, m, h, d or w, "
            "e.g. 30d, 12h, 90m or 3600s."
        )
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise ValueError(f"Invalid duration {text!r}: it must be greater than zero.")
    return timedelta(seconds=value)


# -- status ----------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _seconds(delta: timedelta | None) -> float | None:
    return round(delta.total_seconds(), 3) if delta is not None else None


def failed_text(failed: int, upstream_failed: int) -> str:
    """``1 failed, 6 upstream failed``: ``failed`` counts both, shown apart so one failure reads as one."""
    text = f"{failed - upstream_failed} failed"
    return text + (f", {upstream_failed} upstream failed" if upstream_failed else "")


def workflow_summary(workflow: Workflow, node_limit: int = NODE_TABLE_LIMIT) -> Data:
    """Everything ``dyrygent_status`` shows, as JSON-ready data.

    Up to ``node_limit`` nodes are listed one by one; a bigger workflow is
    summarised per (task name, kind, state) with a constant number of queries,
    so the command stays fast on a 10,000-node workflow.
    """
    wf = workflow
    data = {
        "id": str(wf.pk),
        "name": wf.name,
        "state": wf.state,
        "pass_results": wf.pass_results,
        "error": wf.error,
        "counters": {
            "total": wf.nodes_total,
            "done": wf.nodes_done,
            "succeeded": wf.nodes_succeeded,
            "failed": wf.nodes_failed,
            "upstream_failed": wf.nodes_upstream_failed,
            "skipped": wf.nodes_skipped,
            "ticks": wf.ticks,
        },
        "timings": {
            "created_at": _iso(wf.created_at),
            "started_at": _iso(wf.started_at),
            "finished_at": _iso(wf.finished_at),
            "deadline": _iso(wf.deadline),
            "paused_at": _iso(wf.paused_at),
            "next_tick_at": _iso(wf.next_tick_at),
            "duration_seconds": _seconds(wf.duration),
        },
        "custom_payload": wf.custom_payload,
        **family(wf),
    }
    nodes = WorkflowNode.objects.filter(workflow_id=wf.pk)
    count = nodes.count()
    data["node_rows"] = count
    if count <= node_limit:
        data["collapsed"] = False
        rows = list(nodes.order_by("position").only(
            "position", "task_id", "task_name", "kind", "state", "reason", "attempts", "signature",
            "queued_at", "started_at", "finished_at", "concurrency_key", "concurrency_limit",
        ))
        waits = WorkflowNode.objects.key_waits(rows)
        data["nodes"] = [
            {
                "position": n.position,
                "task_id": n.task_id,
                "task_name": n.task_name,
                "kind": n.kind,
                "state": n.state,
                "call": node_call(n.kind, n.signature),
                "reason": waits.get(n.pk, n.reason),
                "concurrency_key": n.concurrency_key,
                "attempts": n.attempts,
                "queued_at": _iso(n.queued_at),
                "started_at": _iso(n.started_at),
                "finished_at": _iso(n.finished_at),
                "duration_seconds": _seconds(n.duration),
            }
            for n in rows
        ]
    else:
        data["collapsed"] = True
        data["groups"] = [
            {
                "task_name": row["task_name"],
                "kind": row["kind"],
                "state": row["state"],
                "count": row["count"],
                "first_started_at": _iso(row["first_started"]),
                "last_finished_at": _iso(row["last_finished"]),
            }
            for row in nodes.values("task_name", "kind", "state")
            .annotate(count=Count("id"), first_started=Min("started_at"), last_finished=Max("finished_at"))
            .order_by("task_name", "kind", "state")
        ]
    return data


def family(wf: Workflow) -> Data:
    """The workflow's place among sub-workflows: the workflow and node that run it, and what its nodes run.

    ``parent_workflow`` / ``parent_node`` (the node's task id) are None for a
    top-level workflow; ``subworkflows`` lists the children its sub-workflow
    nodes started (oldest first, at most 100), each with its node's task id.
    """
    return families([wf])[wf.pk]


def families(workflows: Sequence[Workflow]) -> dict[Any, Data]:
    """``family`` of each workflow, in two queries for a whole page of them (the API's list)."""
    parent_ids = [wf.parent_node_id for wf in workflows if wf.parent_node_id]
    parents = {row["pk"]: row for row in WorkflowNode.objects.filter(pk__in=parent_ids).values(
        "pk", "workflow_id", "task_id")} if parent_ids else {}
    children: dict[Any, list[Data]] = {wf.pk: [] for wf in workflows}
    rows = Workflow.objects.filter(parent_node__workflow_id__in=list(children)).order_by("created_at").values_list(
        "parent_node__workflow_id", "pk", "state", "parent_node__task_id")
    for owner, pk, state, node in rows:
        if len(children[owner]) < 100:
            children[owner].append({"id": str(pk), "state": state, "node": node})
    out = {}
    for wf in workflows:
        parent = parents.get(wf.parent_node_id) if wf.parent_node_id else None
        out[wf.pk] = {
            "parent_workflow": str(parent["workflow_id"]) if parent else None,
            "parent_node": parent["task_id"] if parent else None,
            "subworkflows": children[wf.pk],
        }
    return out


def call_text(signature: dict[str, Any] | None, limit: int = 60) -> str:
    """``('web-1', retries=3)``: the stored arguments, shortened, to tell sibling nodes apart."""
    signature = signature or {}
    parts = [repr(a) for a in signature.get("args") or []]
    parts += [f"{k}={v!r}" for k, v in (signature.get("kwargs") or {}).items()]
    text = " ".join(("(" + ", ".join(parts) + ")").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def node_call(kind: str, signature: dict[str, Any] | None) -> str:
    """``call_text`` of what a node calls: a task's arguments, a sub-workflow's parameters."""
    if kind == NodeKind.SUBWORKFLOW:
        return call_text({"kwargs": ((signature or {}).get("subworkflow") or {}).get("params") or {}})
    return call_text(signature)


def node_label(task_name: str, kind: str) -> str:
    if kind == NodeKind.TASK:
        return task_name or "?"
    return f"{task_name} ({kind})" if task_name else f"({kind})"


# -- graph export --------------------------------------------------------------------------------------


def graph_data(workflow: Workflow) -> Data:
    """Nodes and edges of a saved workflow, JSON-ready (edge: dependency -> dependent)."""
    nodes = [
        {
            "id": n["pk"],
            "task_id": n["task_id"],
            "task_name": n["task_name"],
            "kind": n["kind"],
            "state": n["state"],
            "position": n["position"],
            "concurrency_key": n["concurrency_key"],
        }
        for n in WorkflowNode.objects.filter(workflow_id=workflow.pk)
        .order_by("position").values("pk", "task_id", "task_name", "kind", "state", "position", "concurrency_key")
    ]
    edges = [
        {"from": dep, "to": node}
        for node, dep in WorkflowEdge.objects.filter(workflow_id=workflow.pk)
        .order_by("node_id", "position").values_list("node_id", "dependency_id")
    ]
    return {
        "workflow": {"id": str(workflow.pk), "name": workflow.name, "state": workflow.state},
        "nodes": nodes,
        "edges": edges,
    }


def _dot_string(text: object) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as \\n."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r", "").replace("\n", "\\n") + '"'


DOT_COLOURS = {
    "PENDING": "#eeeeee", "WAITING": "#9fd8d9", "QUEUED": "#cfe2ff", "STARTED": "#9ec5fe", "RETRY": "#ffe69c",
    "SUCCESS": "#a3cfbb", "FAILURE": "#f1aeb5", "UPSTREAM_FAILED": "#f8d7da",
    "SKIPPED": "#e2e3e5", "CANCELED": "#adb5bd",
}


def _export_label(node: dict[str, Any]) -> str:
    """A node's label in the dot and Mermaid exports: its name, its state, its concurrency key if any."""
    label = node_label(node["task_name"], node["kind"]) + "\n" + node["state"]
    return label + (f"\nkey {node['concurrency_key']}" if node.get("concurrency_key") else "")


def graph_to_dot(data: Data) -> str:
    wf = data["workflow"]
    lines = [
        "digraph workflow {",
        f"  label={_dot_string((wf['name'] or 'workflow') + ' ' + wf['id'] + ' (' + wf['state'] + ')')};",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for n in data["nodes"]:
        colour = DOT_COLOURS.get(n["state"], "#ffffff")
        if n["kind"] == NodeKind.JOIN:
            lines.append(
                f'  n{n["id"]} [shape=point, width=0.12, fillcolor="{colour}", '
                f'tooltip={_dot_string("join " + n["state"])}];'
            )
            continue
        label = _export_label(n)
        # No task (a wait, a timer): dashed; a branch: heavy; a sub-workflow: doubled.
        style = ', style="rounded,filled,dashed"' if n["kind"] in WAITING_KINDS else ""
        if n["kind"] == NodeKind.BRANCH:
            style = ", penwidth=3"
        elif n["kind"] == NodeKind.SUBWORKFLOW:  # a box in a box, as in the admin's picture
            style = ", peripheries=2"
        lines.append(
            f'  n{n["id"]} [label={_dot_string(label)}, fillcolor="{colour}"{style}, '
            f'tooltip={_dot_string(n["task_id"])}];'
        )
    for e in data["edges"]:
        lines.append(f'  n{e["from"]} -> n{e["to"]};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: object) -> str:
    """Mermaid labels are HTML-ish: quote them and use entity codes for risky characters."""
    replacements = {
        "&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;",
        "[": "#91;", "]": "#93;", "{": "#123;", "}": "#125;", "|": "#124;", "`": "#96;",
    }
    text = "".join(replacements.get(ch, ch) for ch in str(text))
    return '"' + text.replace("\r", "").replace("\n", "<br/>") + '"'


#: Node kinds drawn in their own shape: a branch as a rhombus, a wait as a stadium, a timer as a hexagon,
#: a sub-workflow as a subroutine (a box with doubled sides).
MERMAID_SHAPES = {
    NodeKind.BRANCH: ("{", "}"), NodeKind.WAIT: ("([", "])"), NodeKind.TIMER: ("{{", "}}"),
    NodeKind.SUBWORKFLOW: ("[[", "]]"),
}


def graph_to_mermaid(data: Data) -> str:
    lines = ["flowchart LR"]
    for n in data["nodes"]:
        if n["kind"] == NodeKind.JOIN:
            lines.append(f'  n{n["id"]}(({_mermaid_text(" ")}))')
        else:
            label = _export_label(n)
            opening, closing = MERMAID_SHAPES.get(n["kind"], ("[", "]"))
            lines.append(f'  n{n["id"]}{opening}{_mermaid_text(label)}{closing}')
        lines.append(f'  class n{n["id"]} {n["state"].lower()}')
    for e in data["edges"]:
        lines.append(f'  n{e["from"]} --> n{e["to"]}')
    for state, colour in DOT_COLOURS.items():
        lines.append(f"  classDef {state.lower()} fill:{colour}")
    return "\n".join(lines) + "\n"


def graph_to_json(data: Data) -> str:
    return json.dumps(data, indent=2) + "\n"


def _admin_urls(workflow: Workflow) -> Callable[[Item], str]:
    """Links of the boxes: the admin's node pages when the admin is mounted, else none."""
    from urllib.parse import quote

    from django.urls import NoReverseMatch, reverse

    if not getattr(django_settings, "ROOT_URLCONF", None):  # worker-only settings: no URLs at all
        return lambda item: ""
    try:
        node_url = reverse("admin:django_dyrygent_workflownode_change", args=[0])
        list_url = reverse("admin:django_dyrygent_workflownode_changelist")
    except NoReverseMatch:
        return lambda item: ""

    def url(item: Item) -> str:
        if item.is_group:
            return f"{list_url}?workflow={workflow.pk}&task_name={quote(item.task_name, safe='')}"
        return node_url.replace("/0/", f"/{item.node['id']}/")

    return url


def render_svg(workflow: Workflow) -> str:
    """The admin's DAG picture as a standalone SVG file (same layout and template).

    The admin page styles the picture with ``dag.css``; a file opened on its
    own has no page around it, so the stylesheet is embedded in a ``<style>``
    element (the admin never does that: its pages must work under a strict CSP).
    """
    from django.contrib.staticfiles import finders
    from django.template.loader import render_to_string

    from .graph import layout as graph

    items, edges = graph.collapse(graph.load(workflow))
    drawing = graph.layout(items, edges)
    url = _admin_urls(workflow)
    context = {"workflow": workflow, "drawing": drawing, "shape": graph.shape(items, edges)}
    context["svg_markup"] = graph.svg_markup(drawing, url)  # the template takes the nodes pre-rendered
    svg = render_to_string("django_dyrygent/dag.svg", context)
    found: str | None
    try:  # the project's override of dag.css, if it has one
        found = finders.find("django_dyrygent/dag.css")
    except Exception:
        found = None
    css_path = Path(found) if found else Path(__file__).parent / "static" / "django_dyrygent" / "dag.css"
    css = css_path.read_text(encoding="utf-8") if css_path.exists() else ""
    head, sep, rest = svg.partition(">")
    style = f"<style><![CDATA[\n{css}]]></style>" if css else ""
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + head + sep + "\n" + style + rest.lstrip("\n") + "\n"


# -- pruning -------------------------------------------------------------------------------------------


def prunable(cutoff: datetime, states: Iterable[str] | None = None) -> WorkflowQuerySet:
    """Finished workflows that ended (or, lacking an end time, were created) before ``cutoff``."""
    states = list(states or WORKFLOW_FINAL)
    not_final = set(states) - set(WORKFLOW_FINAL)
    if not_final:
        raise ValueError(
            f"Only finished workflows can be pruned; {', '.join(sorted(not_final))} "
            f"is not a final state (use {', '.join(sorted(WORKFLOW_FINAL))})."
        )
    return Workflow.objects.filter(state__in=states).filter(
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    )


def prune(
    cutoff: datetime, states: Iterable[str] | None = None, batch_size: int = 500, dry_run: bool = False
) -> dict[str, int]:
    """Delete finished workflows (and their nodes, edges, events) older than ``cutoff``.

    Works in batches, each in its own transaction that first locks the
    workflow rows it deletes, so a concurrent ``retry()`` (which takes the
    same lock) either revives a workflow before it is chosen or waits and
    finds it gone; the state filter is re-applied under the lock. Children
    are deleted with one DELETE per table per batch, not row by row.
    Returns ``{"workflows": n, "nodes": n, "edges": n, "events": n}``.
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    qs = prunable(cutoff, states)
    totals = {"workflows": 0, "nodes": 0, "edges": 0, "events": 0}
    if dry_run:
        chosen = qs.values("pk")
        totals["workflows"] = qs.count()
        totals["nodes"] = WorkflowNode.objects.filter(workflow_id__in=chosen).count()
        totals["edges"] = WorkflowEdge.objects.filter(workflow_id__in=chosen).count()
        totals["events"] = WorkflowEvent.objects.filter(workflow_id__in=chosen).count()
        return totals
    while True:
        with transaction.atomic():
            ids = list(
                qs.order_by("created_at").select_for_update(skip_locked=True)
                .values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                break
            # Children first, one DELETE per table: the workflow's own delete()
            # then only walks an empty tree (and still honours other apps' FKs).
            totals["events"] += WorkflowEvent.objects.filter(workflow_id__in=ids).delete()[0]
            totals["edges"] += WorkflowEdge.objects.filter(workflow_id__in=ids).delete()[0]
            totals["nodes"] += WorkflowNode.objects.filter(workflow_id__in=ids).delete()[1].get(
                WorkflowNode._meta.label, 0
            )
            deleted = Workflow.objects.filter(pk__in=ids).delete()[1].get(Workflow._meta.label, 0)
            totals["workflows"] += deleted
        logger.info("Pruned %d workflow(s): %s", deleted, ", ".join(str(pk) for pk in ids[:20]))
        if len(ids) < batch_size:
            break
    return totals
