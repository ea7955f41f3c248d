from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import models
from django.utils import timezone

from .states import NODE_ACTIVE, WORKFLOW_ACTIVE, WORKFLOW_RUNNABLE

if TYPE_CHECKING:
    from .models import Workflow, WorkflowNode  # noqa: F401 (the QuerySet["..."] parameters)


class WorkflowQuerySet(models.QuerySet["Workflow"]):
    def active(self) -> WorkflowQuerySet:
        """Workflows that are not over (paused ones included)."""
        return self.filter(state__in=WORKFLOW_ACTIVE)

    def stale(self, older_than_seconds: float) -> WorkflowQuerySet:
        """Workflows whose scheduled tick is overdue (its message was probably lost).

        Runnable workflows (a paused one has no tick until it resumes), and
        finished ones whose callbacks the engine still watches (a finished
        workflow keeps ``next_tick_at`` only for that).
        """
        cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
        return self.filter(
            models.Q(next_tick_at__lt=cutoff)
            | models.Q(state__in=WORKFLOW_RUNNABLE,
                       next_tick_at__isnull=True, created_at__lt=cutoff)
        )


class WorkflowNodeQuerySet(models.QuerySet["WorkflowNode"]):
    def active(self) -> WorkflowNodeQuerySet:
        return self.filter(state__in=NODE_ACTIVE)
