from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...operations import NODE_TABLE_LIMIT, failed_text, node_label, workflow_summary
from ._common import add_workflow_id_argument, get_workflow


def _table(rows: list[tuple[object, ...]], headers: tuple[str, ...]) -> Iterator[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row, strict=True)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    yield fmt.format(*headers).rstrip()
    for row in rows:
        yield fmt.format(*(str(c) for c in row)).rstrip()


def _short_time(iso: str | None) -> str:
    return iso[11:23] if iso else "-"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


class Command(BaseCommand):
    help = (
        "Show a workflow: state, counters, timings and its nodes. Workflows of more than "
        f"{NODE_TABLE_LIMIT} nodes are summarised per task name and state."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser)
        parser.add_argument(
            "--json", dest="as_json", action="store_true", default=False,
            help="Print the same information as one JSON document (for scripts).",
        )
        parser.add_argument(
            "--node-limit", dest="node_limit", type=int, default=NODE_TABLE_LIMIT,
            help="List nodes one by one up to this many nodes, group them above (default: %(default)s).",
        )

    def handle(self, *args: Any, workflow_id: str, as_json: bool, node_limit: int, **options: Any) -> None:
        wf = get_workflow(workflow_id)
        data = workflow_summary(wf, node_limit=node_limit)
        if as_json:
            self.stdout.write(json.dumps(data, indent=2, default=str))
            return
        c, t = data["counters"], data["timings"]
        state_style = {
            "SUCCESS": self.style.SUCCESS, "FAILURE": self.style.ERROR, "ERROR": self.style.ERROR,
            "CANCELED": self.style.WARNING, "PAUSED": self.style.WARNING,
        }.get(data["state"], str)
        self.stdout.write(f"Workflow {data['id']}" + (f"  {data['name']}" if data["name"] else ""))
        self.stdout.write(f"  state      {state_style(data['state'])}")
        self.stdout.write(
            f"  nodes      {c['done']}/{c['total']} done: {c['succeeded']} succeeded, "
            f"{failed_text(c['failed'], c['upstream_failed'])}, {c['skipped']} skipped"
        )
        self.stdout.write(f"  created    {t['created_at']}")
        self.stdout.write(f"  started    {t['started_at'] or '-'}")
        self.stdout.write(f"  finished   {t['finished_at'] or '-'}")
        self.stdout.write(f"  duration   {_secs(t['duration_seconds'])}")
        self.stdout.write(f"  deadline   {t['deadline'] or '-'}")
        if t["paused_at"]:
            self.stdout.write(f"  paused     {t['paused_at']} (the deadline moves on by the pause at resume)")
        self.stdout.write(f"  ticks      {c['ticks']}")
        if data["parent_workflow"]:
            self.stdout.write(
                f"  run by     workflow {data['parent_workflow']} (sub-workflow node {data['parent_node']})")
        for child in data["subworkflows"]:
            self.stdout.write(f"  runs       sub-workflow {child['id']} {child['state']} (node {child['node']})")
        if data["error"]:
            self.stdout.write(f"  error      {data['error']}")
        self.stdout.write("")
        rows: list[tuple[object, ...]]
        headers: tuple[str, ...]
        if data["collapsed"]:
            self.stdout.write(f"{data['node_rows']} node rows, grouped by task and state:")
            rows = [
                (node_label(g["task_name"], g["kind"]), g["state"], g["count"],
                 _short_time(g["first_started_at"]), _short_time(g["last_finished_at"]))
                for g in data["groups"]
            ]
            headers = ("TASK", "STATE", "COUNT", "FIRST START", "LAST FINISH")
        else:
            rows = [
                (n["position"],
                 node_label(n["task_name"], n["kind"]) + (n["call"] if n["kind"] != "join" else ""),
                 n["state"], n["task_id"], _secs(n["duration_seconds"]), n["reason"])
                for n in data["nodes"]
            ]
            headers = ("#", "TASK", "STATE", "TASK ID", "DURATION", "REASON")
        for line in _table(rows, headers):
            self.stdout.write(line)
