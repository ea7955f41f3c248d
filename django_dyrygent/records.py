"""The rows kept beside a workflow's graph: its event log, the workers' heartbeats, queued runs.

Apart from ``models`` (where they are imported, so ``django_dyrygent.models``
stays their path) because nothing in them builds or runs a graph: the engine
appends events, the liveness thread beats, the launcher queues runs. Foreign
keys name the graph's models by string, so this module imports nothing of
``models``.
"""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.translation import gettext_lazy as _


class WorkflowEvent(models.Model):
    """One transition of a workflow or of one of its nodes, written with the change."""

    workflow = models.ForeignKey("Workflow", on_delete=models.CASCADE, related_name="events")
    node = models.ForeignKey(
        "WorkflowNode", on_delete=models.CASCADE, related_name="events", null=True, blank=True,
    )
    old_state = models.CharField(_("old state"), max_length=20, blank=True, default="")
    new_state = models.CharField(_("new state"), max_length=20)
    reason = models.CharField(_("reason"), max_length=255, blank=True, default="")
    created_at = models.DateTimeField(_("at"), db_index=True)

    class Meta:
        verbose_name = _("workflow event")
        verbose_name_plural = _("workflow events")
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["workflow", "created_at"], name="dyrygent_event_wf_idx")]

    def __str__(self) -> str:
        who = f"node {self.node_id}" if self.node_id else "workflow"
        return f"{who}: {self.old_state or '-'} -> {self.new_state}"


class WorkerHeartbeat(models.Model):
    """One running Celery worker (main process), kept fresh by its liveness thread.

    The engine reads it to tell a running node from one whose worker died
    (stale ``last_seen``) or lost its outcome (worker alive, task not held).
    """

    hostname = models.CharField(_("worker"), max_length=255, help_text=_("Celery node name."))
    pid = models.PositiveIntegerField(_("pid"), help_text=_("Process id of the worker's main process."))
    started_at = models.DateTimeField(_("started at"))
    last_seen = models.DateTimeField(_("last seen"), db_index=True)
    active_task_ids = models.JSONField(
        _("active tasks"), default=list, blank=True,
        help_text=_("Task ids the worker's pool was running at the last beat."),
    )
    reserved_task_ids = models.JSONField(
        _("reserved tasks"), default=list, blank=True,
        help_text=_("Task ids prefetched or scheduled (ETA) by the worker at the last beat."),
    )

    class Meta:
        verbose_name = _("worker heartbeat")
        verbose_name_plural = _("worker heartbeats")
        ordering = ["started_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["hostname", "pid"], name="dyrygent_heartbeat_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.hostname} (pid {self.pid})"

    @property
    def held_task_ids(self) -> set[str]:
        return {*(self.active_task_ids or ()), *(self.reserved_task_ids or ())}


class QueuedRun(models.Model):
    """A scheduled start that waits for the running workflow of its definition to end.

    The ``workflow_finished`` receiver of that run starts the oldest waiting
    one (``launch.start_next_queued``); see ``launch.start_scheduled`` for why
    a run that ends while a start is being queued cannot miss it.
    """

    definition = models.CharField(_("definition"), max_length=100, db_index=True)
    parameters = models.JSONField(_("parameters"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(_("queued at"), auto_now_add=True)

    class Meta:
        verbose_name = _("queued run")
        verbose_name_plural = _("queued runs")
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.definition} queued at {self.created_at:%Y-%m-%d %H:%M:%S}"
