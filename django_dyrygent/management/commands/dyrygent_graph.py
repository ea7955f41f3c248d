from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import operations
from ._common import add_workflow_id_argument, get_workflow

FORMATS = ("svg", "dot", "mermaid", "json")


class Command(BaseCommand):
    help = (
        "Export a workflow's DAG: svg (the admin's picture, standalone), dot (Graphviz), mermaid "
        "(paste into Markdown) or json (nodes and edges, edge = dependency -> dependent)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser)
        parser.add_argument(
            "--format", dest="format", choices=FORMATS, default="dot",
            help="Output format (default: %(default)s).",
        )
        parser.add_argument(
            "--output", "-o", dest="output", default=None, metavar="FILE",
            help="Write to FILE instead of standard output.",
        )

    def handle(self, *args: Any, workflow_id: str, format: str, output: str | None, **options: Any) -> None:
        if format not in FORMATS:  # call_command(format=...) skips argparse's choices
            raise CommandError(f"Unknown format {format!r}; use one of {', '.join(FORMATS)}.")
        wf = get_workflow(workflow_id)
        if format == "svg":
            text = operations.render_svg(wf)
        else:
            data = operations.graph_data(wf)
            text = {
                "dot": operations.graph_to_dot,
                "mermaid": operations.graph_to_mermaid,
                "json": operations.graph_to_json,
            }[format](data)
        if output is None:
            self.stdout.write(text, ending="" if text.endswith("\n") else "\n")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}") from None
        self.stdout.write(f"Wrote the {format} graph of workflow {wf.pk} to {output}.")
