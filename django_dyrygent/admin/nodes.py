"""The admin pages of nodes and worker heartbeats; registered when ``admin`` imports this module.

A node's fields are the engine's, so none is edited; what an operator does
to one node (retry it and what failed after it, mark it succeeded or
skipped, cancel it) are actions, on the node list and as buttons on the
node's page, each behind a permission of its own (``WorkflowNode.Meta``)
and each one engine step (``engine.nodes``), so the event log records it.
A waiting node is answered: the node list's *Approve* / *Reject* actions
complete wait nodes and need the ``signal_workflow`` permission. Heartbeats
are only read. ``django_dyrygent.admin`` re-exports both admins.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, cast

import django
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from .. import engine
from ..engine import nodes as node_actions
from ..graph import layout as graph
from ..graph.layout import shorten
from ..models import WorkerHeartbeat, Workflow, WorkflowNode
from ..querysets import WorkflowNodeQuerySet, key_wait
from ..states import NODE_FAILED, NodeKind, NodeState, WorkflowState
from ..worker import liveness
from ..worker.liveness import Snapshot
from .display import admin_url, short_time, state_badge, workflow_link, workflow_links
from .readonly import ReadOnlyAdmin

#: Node page action -> (permission codename, the states it applies to, label, what it does).
NODE_ACTIONS: dict[str, tuple[str, frozenset[str], Any, Any]] = {
    "retry": ("retry_node", frozenset(NODE_FAILED), _("Retry this node and what failed after it"),
              _("Runs it again with a fresh task id, and every node after it that did not succeed.")),
    "mark_succeeded": ("mark_node", frozenset({NodeState.QUEUED, NodeState.PENDING, *NODE_FAILED}),
                       _("Mark succeeded"),
                       _("Ends it SUCCESS with the result given, without running it; what it held back runs.")),
    "mark_skipped": ("mark_node", frozenset({NodeState.QUEUED, NodeState.PENDING, *NODE_FAILED}),
                     _("Mark skipped"), _("Ends it SKIPPED without running it; what it held back runs.")),
    "cancel": ("cancel_node", frozenset({NodeState.PENDING, NodeState.QUEUED, NodeState.STARTED, NodeState.RETRY}),
               _("Cancel this node"), _("Revokes its task; the nodes after it follow their trigger rules.")),
}


def _by(request: HttpRequest, verb: str) -> str:
    return f"{verb} by {request.user.get_username()} in the admin"


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
                       "pretty_payload", "pretty_options", "concurrency", "subworkflow_link")
    fieldsets = (
        (None, {"fields": ("workflow_link", "state_badge", "task_name", "task_id", "kind", "trigger_rule",
                           "reason", "concurrency", "subworkflow_link")}),
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
    change_form_template = "admin/django_dyrygent/workflownode/change_form.html"
    actions = ("retry_nodes", "mark_nodes_succeeded", "mark_nodes_skipped", "cancel_nodes", "approve_waits",
               "reject_waits")
    json_values = {
        "arguments": lambda node: {"args": node.args, "kwargs": node.kwargs},
        "options": lambda node: (node.signature or {}).get("options"),
        "result": lambda node: node.result,
        "custom_payload": lambda node: node.custom_payload,
    }

    class Media:
        css = {"all": ("django_dyrygent/dag.css",)}

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Nothing is edited; each action has a permission of its own (below).
        return False

    def has_retry_node_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_dyrygent.retry_node")

    def has_mark_node_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_dyrygent.mark_node")

    def has_cancel_node_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_dyrygent.cancel_node")

    # -- actions ------------------------------------------------------------------------------

    def _act_on_each(
        self, request: HttpRequest, queryset: QuerySet[WorkflowNode], act: Callable[[WorkflowNode], Any],
    ) -> tuple[int, int]:
        """Run ``act`` on each selected node, one engine step each; (acted on, nodes it put back to run)."""
        done = reset = 0
        refused: list[str] = []
        for node in queryset.only("pk", "workflow_id", "task_id").order_by("workflow_id", "position"):
            try:
                outcome = act(node)
            except ValidationError as exc:
                refused.append(" ".join(exc.messages))
                continue
            if outcome is False:
                refused.append(_("Node %(id)s had already ended.") % {"id": node.task_id})
                continue
            done += 1
            reset += outcome if isinstance(outcome, int) and not isinstance(outcome, bool) else 0
        for message in refused[:5]:
            self.message_user(request, message, messages.WARNING)
        if len(refused) > 5:
            self.message_user(request, _("%(count)d more nodes were refused.") % {"count": len(refused) - 5},
                              messages.WARNING)
        return done, reset

    @admin.action(description=_("Retry selected nodes and what failed after them"), permissions=("retry_node",))
    def retry_nodes(self, request: HttpRequest, queryset: QuerySet[WorkflowNode]) -> None:
        reason = _by(request, "retried")
        done, reset = self._act_on_each(
            request, queryset, lambda n: node_actions.retry_node(n.workflow_id, n.pk, reason=reason),
        )
        if done:
            self.message_user(request, ngettext(
                "%(count)d node retried", "%(count)d nodes retried", done) % {"count": done} + ngettext(
                " (%(nodes)d node reset).", " (%(nodes)d nodes reset).", reset) % {"nodes": reset},
                messages.SUCCESS)

    def _mark(self, request: HttpRequest, queryset: QuerySet[WorkflowNode], target: str, result: Any = None) -> None:
        reason = _by(request, f"marked {target.lower()}")
        done, reset = self._act_on_each(
            request, queryset,
            lambda n: node_actions.mark_node(n.workflow_id, n.pk, target, result=result, reason=reason),
        )
        if done:
            self.message_user(request, ngettext(
                "%(count)d node marked %(state)s", "%(count)d nodes marked %(state)s", done,
            ) % {"count": done, "state": target} + ngettext(
                " (%(nodes)d node after them may run again).", " (%(nodes)d nodes after them may run again).",
                reset,
            ) % {"nodes": reset}, messages.SUCCESS)

    @admin.action(description=_("Mark selected nodes succeeded (result: null)"), permissions=("mark_node",))
    def mark_nodes_succeeded(self, request: HttpRequest, queryset: QuerySet[WorkflowNode]) -> None:
        self._mark(request, queryset, NodeState.SUCCESS)

    @admin.action(description=_("Mark selected nodes skipped"), permissions=("mark_node",))
    def mark_nodes_skipped(self, request: HttpRequest, queryset: QuerySet[WorkflowNode]) -> None:
        self._mark(request, queryset, NodeState.SKIPPED)

    @admin.action(description=_("Cancel selected nodes"), permissions=("cancel_node",))
    def cancel_nodes(self, request: HttpRequest, queryset: QuerySet[WorkflowNode]) -> None:
        reason = _by(request, "canceled")
        done, _reset = self._act_on_each(
            request, queryset, lambda n: node_actions.cancel_node(n.workflow_id, n.pk, reason=reason),
        )
        if done:
            self.message_user(request, ngettext(
                "%(count)d node canceled.", "%(count)d nodes canceled.", done) % {"count": done}, messages.SUCCESS)

    # -- the node page's buttons ----------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<path:object_id>/act/<str:action>/", self.admin_site.admin_view(require_POST(self.act_view)),
                 name="%s_%s_act" % info),
        ] + super().get_urls()

    def page_actions(self, request: HttpRequest, node: WorkflowNode) -> list[dict[str, Any]]:
        """The node page's buttons: permitted, and able to change something in the node's state now."""
        if node.kind != NodeKind.TASK or node.workflow.state == WorkflowState.INITIAL:
            return []
        return [
            {"name": name, "label": label, "help": help_text,
             "url": admin_url(self.admin_site, "workflownode", "act", node.pk, name)}
            for name, (codename, states, label, help_text) in NODE_ACTIONS.items()
            if node.state in states and request.user.has_perm(f"django_dyrygent.{codename}")
            and not (name == "cancel" and node.workflow.state != WorkflowState.RUNNING)
        ]

    def act_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """One action on this node, then back to its page with what happened."""
        node: WorkflowNode = self._get_viewable(request, object_id)
        if action not in NODE_ACTIONS or not request.user.has_perm(f"django_dyrygent.{NODE_ACTIONS[action][0]}"):
            raise PermissionDenied
        back = HttpResponseRedirect(admin_url(self.admin_site, "workflownode", "change", node.pk))
        message: str
        try:
            if action == "retry":
                reset = node_actions.retry_node(node.workflow_id, node.pk, reason=_by(request, "retried"))
                message = ngettext("Retried: %(count)d node reset.", "Retried: %(count)d nodes reset.", reset) % {
                    "count": reset}
            elif action == "cancel":
                if not node_actions.cancel_node(node.workflow_id, node.pk, reason=_by(request, "canceled")):
                    messages.warning(request, _("The node had already ended."))
                    return back
                message = str(_("Node canceled."))
            else:
                target = NodeState.SUCCESS if action == "mark_succeeded" else NodeState.SKIPPED
                result = _posted_result(request) if target == NodeState.SUCCESS else None
                node_actions.mark_node(node.workflow_id, node.pk, target, result=result,
                                       reason=_by(request, f"marked {target.lower()}"))
                message = str(_("Node marked %(state)s.")) % {"state": target}
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return back
        messages.success(request, message)
        return back

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        node = self.get_object(request, object_id) if request.method == "GET" else None
        if node is not None and self.has_view_permission(request, node):
            context["node_actions"] = self.page_actions(request, node)
        return super().change_view(request, object_id, form_url, context)
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
        return format_html('<span class="dy-wrap" title="{}">{}</span>', title, label)

    @admin.display(description=_("task id"), ordering="task_id")
    def short_task_id(self, obj: WorkflowNode) -> str:
        return format_html('<code class="dy-nowrap" title="{}">{}</code>', obj.task_id, obj.task_id[:8])

    @admin.display(description=_("finished at"), ordering="finished_at")
    def finished_time(self, obj: WorkflowNode) -> str:
        return short_time(obj.finished_at)

    @admin.display(description=_("state"), ordering="state")
    def state_badge(self, obj: WorkflowNode) -> str:
        badge = state_badge(obj.state, obj.get_state_display())
        why = self._key_wait(obj)
        return format_html('{} <span class="dy-key-wait">{}</span>', badge, why) if why else badge

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowNode]:
        # The slots taken of each node's key, in the same query (nothing counted for a node without a key).
        return cast(WorkflowNodeQuerySet, super().get_queryset(request)).with_slots_taken()

    @staticmethod
    def _key_wait(obj: WorkflowNode) -> str:
        """Why ``obj`` waits for a slot of its concurrency key; empty when it does not."""
        if obj.state != NodeState.WAITING or not obj.concurrency_key:
            return ""
        return key_wait(obj.concurrency_key, obj.concurrency_limit, getattr(obj, "slots_taken", 0))

    @admin.display(description=_("concurrency key"))
    def concurrency(self, obj: WorkflowNode) -> str:
        if not obj.concurrency_key:
            return "-"
        why = self._key_wait(obj)
        return format_html("<code>{}</code> (limit {}){}", obj.concurrency_key, obj.concurrency_limit,
                           format_html("<br>{}", why) if why else "")

    @admin.display(description=_("workflow"), ordering="workflow")
    def workflow_short(self, obj: WorkflowNode) -> str:
        """The list's column: the name and the id's first 8 characters (names repeat), the whole id in the tooltip."""
        url = admin_url(self.admin_site, "workflow", "change", obj.workflow_id)
        return format_html('<a href="{}" title="{}">{} <code>{}</code></a>', url, obj.workflow_id,
                           shorten(obj.workflow.name or _("workflow"), 18), str(obj.workflow_id)[:8])

    @admin.display(description=_("workflow"), ordering="workflow")
    def workflow_link(self, obj: WorkflowNode) -> str:
        return workflow_link(self.admin_site, obj.workflow.pk, obj.workflow.name)

    @admin.display(description=_("sub-workflow"))
    def subworkflow_link(self, obj: WorkflowNode) -> str:
        """For a sub-workflow node: the workflow it runs (its id is the node's task id) and earlier attempts'."""
        if obj.kind != NodeKind.SUBWORKFLOW:
            return "—"
        children = Workflow.objects.filter(parent_node=obj).order_by("-created_at").only("id", "name", "state")
        return workflow_links(self.admin_site, children[:20]) or str(_("not started yet"))

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
        url = admin_url(self.admin_site, "workflownode", "change", 0)
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


def _posted_result(request: HttpRequest) -> Any:
    """The result typed on the node page: JSON, blank for null; a ValidationError otherwise."""
    text = request.POST.get("result", "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"The result is not valid JSON: {exc}") from None


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    """Which workers are alive and what they hold: the rows the liveness sweep judges by."""

    list_display = ("hostname", "pid", "status", "sweeps", "last_seen", "started_at", "stopped_at", "active_count",
                    "reserved_count", "queue_list")
    search_fields = ("hostname",)
    ordering = ("-last_seen", "id")

    class Media:
        css = {"all": ("django_dyrygent/dag.css",)}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The request's snapshot of every beat (judged as the sweep judges them), per thread.
        self._seen = threading.local()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        self._seen.snapshot = Snapshot.load(timezone.now())
        try:
            return super().changelist_view(request, extra_context)
        finally:
            self._seen.snapshot = None

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self._seen.snapshot = Snapshot.load(timezone.now())
        try:
            return super().change_view(request, object_id, form_url, extra_context)
        finally:
            self._seen.snapshot = None

    def _snapshot(self) -> Snapshot:
        snapshot = getattr(self._seen, "snapshot", None)
        return snapshot if snapshot is not None else Snapshot.load(timezone.now())

    @admin.display(description=_("status"))
    def status(self, obj: WorkerHeartbeat) -> str:
        snapshot = self._snapshot()
        if any(beat.pk == obj.pk for beat in snapshot.live()):
            return format_html('<span class="dy-badge dy-s-SUCCESS">{}</span>', _("alive"))
        silent = graph.format_duration(snapshot.now - obj.last_seen)
        return format_html('<span class="dy-badge dy-s-FAILURE" title="{}">{}</span>',
                           _("no heartbeat for %(silent)s") % {"silent": silent}, _("stale"))

    @admin.display(description=_("sweeps"), boolean=True)
    def sweeps(self, obj: WorkerHeartbeat) -> bool:
        """The oldest live worker runs the sweep (lost ticks, dead workers' nodes, lost messages)."""
        snapshot = self._snapshot()
        cached = getattr(self._seen, "sweeper", None)
        if cached is None or cached[0] is not snapshot:  # once per page: liveness.leader is one query
            cached = self._seen.sweeper = (snapshot, liveness.leader(snapshot.now))
        return bool(cached[1] == (obj.hostname, obj.pid))

    @admin.display(description=_("queues"))
    def queue_list(self, obj: WorkerHeartbeat) -> str:
        return ", ".join(obj.queues or ()) or "—"

    @admin.display(description=_("running"))
    def active_count(self, obj: WorkerHeartbeat) -> int:
        return len(obj.active_task_ids or ())

    @admin.display(description=_("prefetched"))
    def reserved_count(self, obj: WorkerHeartbeat) -> int:
        return len(obj.reserved_task_ids or ())
