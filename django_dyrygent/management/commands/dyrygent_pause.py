from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ... import engine
from ._common import add_workflow_id_argument, get_workflow


class Command(BaseCommand):
    help = (
        "Pause a running workflow: tasks already running finish and are recorded, nothing new is "
        "published until dyrygent_resume. Harmless on a workflow that is not running."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser)
        parser.add_argument(
            "--reason", dest="reason", default="paused from the command line",
            help="Reason stored on the workflow's event (default: %(default)r).",
        )

    def handle(self, *args: Any, workflow_id: str, reason: str, **options: Any) -> None:
        wf = get_workflow(workflow_id)
        if engine.pause(wf.pk, reason=reason):
            self.stdout.write(self.style.SUCCESS(f"Paused workflow {wf.pk}."))
        else:
            wf.refresh_from_db()
            self.stdout.write(f"Workflow {wf.pk} is {wf.state}, not RUNNING; nothing to pause.")
