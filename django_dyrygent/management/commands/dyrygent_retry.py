from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ... import engine
from ._common import add_workflow_id_argument, get_workflow


class Command(BaseCommand):
    help = (
        "Retry a workflow: re-run its FAILURE, UPSTREAM_FAILED and CANCELED nodes with fresh task "
        "ids and resume it; nodes that succeeded keep their results."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser)

    def handle(self, *args: Any, workflow_id: str, **options: Any) -> None:
        wf = get_workflow(workflow_id)
        reset = engine.retry(wf.pk)
        wf.refresh_from_db()
        if reset:
            self.stdout.write(self.style.SUCCESS(
                f"Workflow {wf.pk}: {reset} node(s) reset for another attempt; it is {wf.state}."
            ))
        else:
            self.stdout.write(f"Workflow {wf.pk} is {wf.state}: no failed or canceled node to retry.")
