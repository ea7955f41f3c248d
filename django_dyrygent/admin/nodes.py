"""The admin pages of nodes and worker heartbeats; registered when ``admin`` imports this module.

Apart from the workflow page (``admin``), which links here. A node is
operated through its workflow, except a waiting one, which people answer:
the node list's *Approve* / *Reject* actions complete wait nodes and need
the ``signal_workflow`` permission, not the change permission. A heartbeat
is only read. ``django_dyrygent.admin`` re-exports ``WorkflowNodeAdmin``.
"""

from __future__ import annotations

from typing import Any

import django
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import engine
from ..graph import layout as graph
from ..graph.layout import shorten
from ..models import WorkerHeartbeat, WorkflowNode
from ..states import NodeKind
from .display import short_time, state_badge
from .readonly import ReadOnlyAdmin


@admin.register(WorkflowNode)
class WorkflowNodeAdmin(ReadOnlyAdmin):
    # Short ids and times, no wrapping (dag.css): the list fits a 1,400 px window.
    list_display = ("display_task", "short_task_id", "state_badge", "workflow_short", "attempts",
                    "finished_time", "duration")
    list_filter = ("state", "kind", "task_name")
    search_fields = ("=task_id",)
    list_select_related = ("workflow",)
    readonly_fields = ("workflow_link", "state_badge", "arguments", "pretty_result", "pretty_error",
                       "pretty_previous_task_ids", "duration", "dependency_links", "dependent_links",
                       "pretty_payload", "pretty_options")
    fieldsets = (
        (None, {"fields": ("workflow_link", "state_badge", "task_name", "task_id", "kind", "trigger_rule",
                           "reason")}),
        (_("Call"), {"fields": ("arguments", "pretty_options", "pretty_result", "pretty_error")}),
        (_("Attempts"), {"fields": ("attempts", "retries", "publish_count", "pretty_previous_task_ids",
                                    "worker_hostname", "worker_pid")}),
        (_("Timing"), {"fields": ("queued_at", "started_at", "finished_at", "duration", "timeout",
                                  "timeout_at")}),
        (_("Graph"), {"fields": ("dependency_links", "dependent_links", "waiting", "failed_dependencies",
                                 "fanout_size", "position")}),
        (_("Data"), {"fields": ("pretty_payload",)}),
    )

    list_defer = ("result", "custom_payload", "error", "previous_task_ids")
    actions = ("approve_waits", "reject_waits")
    json_values = {
        "arguments": lambda node: {"args": node.args, "kwargs": node.kwargs},
        "options": lambda node: (node.signature or {}).get("options"),
        "result": lambda node: node.result,
        "custom_payload": lambda node: node.custom_payload,
    }

    class Media:
        css = {"all": ("django_dyrygent/dag.css",)}

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # No action on nodes: they are operated through their workflow.
        return False

    def has_signal_permission(self, request: HttpRequest) -> bool:
        """Who may answer waits (the actions below): ``django_dyrygent.signal_workflow``."""
        return request.user.has_perm("django_dyrygent.signal_workflow")

    @admin.action(description=_("Approve selected waiting nodes"), permissions=("signal",))
    def approve_waits(self, request: HttpRequest, queryset: QuerySet[WorkflowNode]) -> None:
        self._answer(request, queryset, approved=True)

    @admin.action(description=_("Reject selected waiting nodes"), permissions=("signal",))
    def reject_waits(self, request: HttpRequest, queryset: QuerySet[WorkflowNode]) -> None:
        self._answer(request, queryset, approved=False)

    def _answer(self, request: HttpRequest, queryset: QuerySet[WorkflowNode], approved: bool) -> None:
        """Complete each selected WAITING wait node; its result says who answered and how.

        A rejection is a result, not a failure: a branch after the wait reads
        ``approved`` and chooses its path.
        """
        result = {"approved": approved, "by": request.user.get_username()}
        nodes = list(queryset.filter(kind=NodeKind.WAIT).values_list("workflow_id", "pk"))
        done = sum(1 for workflow_id, pk in nodes if engine.complete(workflow_id, pk, result))
        skipped = queryset.count() - done
        self.message_user(request, ngettext(
            "%(count)d waiting node answered.", "%(count)d waiting nodes answered.", done,
        ) % {"count": done}, messages.SUCCESS if done else messages.WARNING)
        if skipped:
            self.message_user(request, ngettext(
                "%(count)d node was not waiting for a signal.", "%(count)d nodes were not waiting for a signal.",
                skipped,
            ) % {"count": skipped}, messages.WARNING)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The DAG links collapsed boxes to ?workflow=<id>&task_name=<name>.
        if lookup in ("workflow", "workflow__exact"):
            return True
        if django.VERSION < (5, 0):  # ModelAdmin.lookup_allowed() takes request from Django 5.0 on
            return super().lookup_allowed(lookup, value)  # type: ignore[call-arg]  # Django 4.2: no request
        # None only from a caller that omits it (Django never does); the base class accepts it at run time.
        return super().lookup_allowed(lookup, value, request)  # type: ignore[arg-type]

    @admin.display(description=_("task"), ordering="task_name")
    def display_task(self, obj: WorkflowNode) -> str:
        label, title = graph.node_names({"task_name": obj.task_name, "kind": obj.kind, "position": obj.position,
                                         "task_id": obj.task_id, "signature": obj.signature})
        return format_html('<span class="dy-nowrap" title="{}">{}</span>', title, label)

    @admin.display(description=_("task id"), ordering="task_id")
    def short_task_id(self, obj: WorkflowNode) -> str:
        return format_html('<code class="dy-nowrap" title="{}">{}</code>', obj.task_id, obj.task_id[:8])

    @admin.display(description=_("finished at"), ordering="finished_at")
    def finished_time(self, obj: WorkflowNode) -> str:
        return short_time(obj.finished_at)

    @admin.display(description=_("state"), ordering="state")
    def state_badge(self, obj: WorkflowNode) -> str:
        return state_badge(obj.state, obj.get_state_display())

    @admin.display(description=_("workflow"), ordering="workflow")
    def workflow_short(self, obj: WorkflowNode) -> str:
        """The list's column: the name alone, the id in the tooltip."""
        url = reverse("admin:django_dyrygent_workflow_change", args=[obj.workflow_id],
                      current_app=self.admin_site.name)
        return format_html('<a href="{}" title="{}">{}</a>', url, obj.workflow_id,
                           shorten(obj.workflow.name or _("workflow"), 24))

    @admin.display(description=_("workflow"), ordering="workflow")
    def workflow_link(self, obj: WorkflowNode) -> str:
        wf = obj.workflow
        url = reverse("admin:django_dyrygent_workflow_change", args=[wf.pk], current_app=self.admin_site.name)
        name = wf.name or _("workflow")
        return format_html('<a href="{}">{} <code>{}</code></a>', url, name, str(wf.pk)[:8])

    @admin.display(description=_("arguments"))
    def arguments(self, obj: WorkflowNode) -> str:
        return self.pretty_value(obj, "arguments") if obj.kind != NodeKind.JOIN else "—"

    @admin.display(description=_("options"))
    def pretty_options(self, obj: WorkflowNode) -> str:
        return self.pretty_value(obj, "options")

    @admin.display(description=_("result"))
    def pretty_result(self, obj: WorkflowNode) -> str:
        return self.pretty_value(obj, "result")

    @admin.display(description=_("error"))
    def pretty_error(self, obj: WorkflowNode) -> str:
        # Never cut: the exception line is the last line of a traceback.
        return format_html('<pre class="dy-pre">{}</pre>', obj.error) if obj.error else "—"

    @admin.display(description=_("previous task ids"))
    def pretty_previous_task_ids(self, obj: WorkflowNode) -> str:
        ids = obj.previous_task_ids or []
        return format_html_join("", '<code class="dy-block">{}</code>', ((i,) for i in ids)) if ids else "—"

    @admin.display(description=_("custom payload"))
    def pretty_payload(self, obj: WorkflowNode) -> str:
        return self.pretty_value(obj, "custom_payload")

    @admin.display(description=_("duration"))
    def duration(self, obj: WorkflowNode) -> str:
        return graph.format_duration(obj.duration) or "—"

    def _node_links(self, queryset: QuerySet[WorkflowNode]) -> str:
        nodes = list(queryset.values("id", "task_name", "kind", "state", "task_id").order_by("position", "id"))
        if not nodes:
            return "—"
        url = reverse("admin:django_dyrygent_workflownode_change", args=[0], current_app=self.admin_site.name)
        return format_html_join(
            "", '<div class="dy-link"><a href="{}">{}</a> {} <code>{}</code></div>',
            ((url.replace("/0/", f"/{n['id']}/"), n["task_name"] or n["kind"], state_badge(n["state"]),
              n["task_id"]) for n in nodes),
        )

    @admin.display(description=_("dependencies"))
    def dependency_links(self, obj: WorkflowNode) -> str:
        return self._node_links(obj.dependencies.all())

    @admin.display(description=_("dependents"))
    def dependent_links(self, obj: WorkflowNode) -> str:
        return self._node_links(obj.dependents.all())


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    """Which workers are alive and what they hold: the rows the liveness sweep judges by."""

    list_display = ("hostname", "pid", "started_at", "last_seen", "active_count", "reserved_count")
    search_fields = ("hostname",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("running"))
    def active_count(self, obj: WorkerHeartbeat) -> int:
        return len(obj.active_task_ids or ())

    @admin.display(description=_("prefetched"))
    def reserved_count(self, obj: WorkerHeartbeat) -> int:
        return len(obj.reserved_task_ids or ())
