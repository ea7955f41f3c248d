from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import engine
from ._common import add_workflow_id_argument, get_workflow


class Command(BaseCommand):
    help = (
        "Signal a workflow: succeed its WAITING wait nodes of that name, with the payload as their "
        "result. Prints how many it completed (0: none of that name is waiting)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser)
        parser.add_argument("name", metavar="NAME", help="The wait's name (add_wait's first argument).")
        parser.add_argument(
            "--payload", dest="payload", default=None,
            help="The result of the completed nodes, as JSON (default: null).",
        )

    def handle(self, *args: Any, workflow_id: str, name: str, payload: str | None, **options: Any) -> None:
        wf = get_workflow(workflow_id)
        try:
            value = None if payload is None else json.loads(payload)
        except ValueError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}") from None
        try:
            completed = engine.signal(wf.pk, name, value)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        if completed:
            self.stdout.write(self.style.SUCCESS(f"Workflow {wf.pk}: signal {name!r} completed {completed} node(s)."))
        else:
            wf.refresh_from_db()
            self.stdout.write(f"Workflow {wf.pk} ({wf.state}): no node waits for {name!r}; nothing completed.")
