from django.db import models
from django.utils import timezone

from .states import NODE_ACTIVE, WorkflowState


class WorkflowQuerySet(models.QuerySet):
    def active(self):
        """Workflows the engine still drives."""
        return self.filter(state__in=[WorkflowState.INITIAL, WorkflowState.RUNNING])

    def stale(self, older_than_seconds):
        """Active workflows whose scheduled tick is overdue (its message was probably lost)."""
        cutoff = timezone.now() - timezone.timedelta(seconds=older_than_seconds)
        return self.active().filter(
            models.Q(next_tick_at__lt=cutoff)
            | models.Q(next_tick_at__isnull=True, created_at__lt=cutoff)
        )


class WorkflowNodeQuerySet(models.QuerySet):
    def active(self):
        return self.filter(state__in=NODE_ACTIVE)
