"""Shared pieces of the dyrygent_* commands (the leading underscore hides it from ``manage.py help``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from ...models import Workflow
from ...operations import resolve_workflow


def get_workflow(ident: object) -> Workflow:
    """Resolve a full id or unique prefix, or stop the command with a clear message."""
    try:
        return resolve_workflow(ident)
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def add_workflow_id_argument(parser: CommandParser, required: bool = True) -> None:
    kwargs: dict[str, Any] = {"nargs": None} if required else {"nargs": "?", "default": None}
    parser.add_argument(
        "workflow_id",
        metavar="ID",
        help="Workflow id: the full UUID or a unique prefix of at least 8 hex digits"
        + ("" if required else " (optional)") + ".",
        **kwargs,
    )
