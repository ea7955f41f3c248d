from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ... import engine
from ._common import add_workflow_id_argument, get_workflow


class Command(BaseCommand):
    help = (
        "Resume a paused workflow: publish what became ready while it was paused and move its "
        "deadline on by the time paused. Harmless on a workflow that is not paused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser)
        parser.add_argument(
            "--reason", dest="reason", default="resumed from the command line",
            help="Reason stored on the workflow's event (default: %(default)r).",
        )

    def handle(self, *args: Any, workflow_id: str, reason: str, **options: Any) -> None:
        wf = get_workflow(workflow_id)
        if engine.resume(wf.pk, reason=reason):
            wf.refresh_from_db()
            self.stdout.write(self.style.SUCCESS(f"Resumed workflow {wf.pk}; it is {wf.state}."))
        else:
            wf.refresh_from_db()
            self.stdout.write(f"Workflow {wf.pk} is {wf.state}, not PAUSED; nothing to resume.")
