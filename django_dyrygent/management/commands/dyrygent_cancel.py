from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ... import engine
from ._common import add_workflow_id_argument, get_workflow


class Command(BaseCommand):
    help = (
        "Cancel a workflow: revoke its published tasks and mark every unfinished node CANCELED. "
        "Harmless on a workflow that has already ended."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser)
        parser.add_argument(
            "--reason", dest="reason", default="canceled from the command line",
            help="Reason stored on the workflow's events and nodes (default: %(default)r).",
        )

    def handle(self, *args: Any, workflow_id: str, reason: str | None, **options: Any) -> None:
        wf = get_workflow(workflow_id)
        if engine.cancel(wf.pk, reason=reason):
            self.stdout.write(self.style.SUCCESS(f"Canceled workflow {wf.pk}."))
        else:
            wf.refresh_from_db()
            self.stdout.write(f"Workflow {wf.pk} had already ended ({wf.state}); nothing to cancel.")
