from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from ...operations import parse_duration, prune
from ...states import WORKFLOW_FINAL

FINAL_STATES = sorted(WORKFLOW_FINAL)


class Command(BaseCommand):
    help = (
        "Delete finished workflows (SUCCESS, FAILURE, ERROR, CANCELED), with their nodes, edges "
        "and events, that ended before a cutoff. Running workflows are never deleted. Celery's "
        "own task results (django_celery_results) are not touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than", dest="older_than", required=True, default=None, metavar="AGE",
            help="Delete workflows that ended more than AGE ago: 30d, 12h, 90m, 3600s or 2w.",
        )
        parser.add_argument(
            "--state", dest="states", action="append", default=None, choices=FINAL_STATES,
            type=str.upper,
            help="Only workflows in this final state; repeatable (default: every final state).",
        )
        parser.add_argument(
            "--dry-run", dest="dry_run", action="store_true", default=False,
            help="Count what would be deleted, delete nothing.",
        )
        parser.add_argument(
            "--batch-size", dest="batch_size", type=int, default=500,
            help="Workflows deleted per transaction (default: %(default)s).",
        )

    def handle(
        self, *args: Any, older_than: str, states: list[str] | None, dry_run: bool, batch_size: int,
        **options: Any,
    ) -> None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from None
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, not {batch_size}.")
        cutoff = timezone.now() - age
        states = sorted({s.upper() for s in states or FINAL_STATES})
        unknown = set(states) - set(FINAL_STATES)
        if unknown:  # call_command(states=[...]) skips argparse's choices
            raise CommandError(
                f"--state {', '.join(sorted(unknown))}: only final states can be pruned "
                f"({', '.join(FINAL_STATES)}); running workflows are never deleted."
            )
        totals = prune(cutoff, states=states, batch_size=batch_size, dry_run=dry_run)
        what = (
            f"{totals['workflows']} workflow(s), {totals['nodes']} node(s), {totals['edges']} edge(s) "
            f"and {totals['events']} event(s)"
        )
        scope = f"in {', '.join(states)} that ended before {cutoff.isoformat(timespec='seconds')}"
        if dry_run:
            self.stdout.write(f"Dry run: would delete {what} {scope}.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Deleted {what} {scope}."))
