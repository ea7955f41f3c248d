from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from .states import NODE_ACTIVE, WORKFLOW_ACTIVE, WORKFLOW_RUNNABLE, NodeState

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

    def slots_taken(self, keys: Iterable[str]) -> dict[str, int]:
        """Concurrency key -> how many of its nodes hold a slot now (QUEUED, STARTED, RETRY); one query.

        The one count of a key's occupancy: the engine admits by it (under
        the key's lock), and the admin, the API and the status command say
        why a node waits with it.
        """
        rows = (
            self.filter(concurrency_key__in=list(keys), state__in=NODE_ACTIVE).order_by()
            .values("concurrency_key").annotate(n=models.Count("pk")).values_list("concurrency_key", "n")
        )
        return {str(key): n for key, n in rows}

    def key_waits(self, nodes: Iterable[WorkflowNode]) -> dict[int, str]:
        """Node id -> why it waits (``key_wait``), for those of ``nodes`` waiting for a slot of their key.

        No query when none of them waits for a key.
        """
        waiters = [n for n in nodes if n.concurrency_key and n.state == NodeState.WAITING]
        if not waiters:
            return {}
        taken = self.slots_taken({str(n.concurrency_key) for n in waiters})
        return {n.pk: key_wait(n.concurrency_key, n.concurrency_limit, taken.get(str(n.concurrency_key), 0))
                for n in waiters}

    def with_slots_taken(self) -> WorkflowNodeQuerySet:
        """Each node annotated ``slots_taken``: how many nodes of its concurrency key hold a slot now.

        A correlated count through the partial key index; a node without a
        key counts nothing (NULL matches no key). For lists of nodes.
        """
        held = (
            self.model.objects.filter(concurrency_key=models.OuterRef("concurrency_key"), state__in=NODE_ACTIVE)
            .order_by().values("concurrency_key").annotate(n=models.Count("pk")).values("n")
        )
        return self.annotate(slots_taken=Coalesce(models.Subquery(held), models.Value(0)))


def key_wait(key: str | None, limit: int | None, taken: int) -> str:
    """Why a node waits for a slot of ``key``, in the words every surface shows."""
    return f"waiting for concurrency key {key}: {taken} of {limit} running"
