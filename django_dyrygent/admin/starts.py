"""Failed starts: the scheduled starts that could not happen, kept where an operator looks.

Rows are written by ``launch.record_failed_start``; nothing here changes one.
They may be deleted once dealt with: they are a log, not engine state.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..models import FailedStart
from .display import pretty_json, pretty_text
from .readonly import ReadOnlyAdmin

#: How far back the workflow list looks for failed starts to warn about.
RECENT = timedelta(days=1)


@admin.register(FailedStart)
class FailedStartAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "definition", "trigger", "error", "hostname")
    list_filter = ("definition", "trigger", "created_at")
    search_fields = ("definition", "error", "hostname")
    date_hierarchy = "created_at"
    readonly_fields = ("pretty_parameters", "pretty_error")
    fields = ("definition", "trigger", "created_at", "hostname", "pretty_error", "pretty_parameters")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Dealt with: cleared by whoever may delete them (the model's own permission).
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    @admin.display(description=_("error"))
    def pretty_error(self, obj: FailedStart) -> str:
        return pretty_text(obj.error)

    @admin.display(description=_("parameters"))
    def pretty_parameters(self, obj: FailedStart) -> str:
        return pretty_json(obj.parameters)


def recent_failures() -> int:
    """Failed starts of the last ``RECENT``: what the workflow list warns about."""
    return FailedStart.objects.filter(created_at__gte=timezone.now() - RECENT).count()
