"""Admin for workflows and nodes: read-only pages, engine-driven actions, a live DAG.

The engine owns every row, so nothing here edits a field. The change
permission still matters: it is what the actions (cancel, retry, tick)
require, which is why ``has_change_permission`` is left alone and every
field is made read-only instead. The base class is in ``admin_readonly``,
the node and worker pages in ``admin_nodes`` (imported here, which registers
them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote

from django.contrib import admin, messages
from django.contrib.admin.utils import display_for_field, lookup_field
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.db.models.functions import Left
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.defaultfilters import linebreaksbr
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.html import conditional_escape, format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from .. import engine
from ..graph import grid, timeline
from ..graph import layout as graph
from ..graph.layout import Item
from ..models import FailedStart, Workflow, WorkflowEvent, WorkflowNode
from ..states import NODE_ACTIVE, NodeState, WorkflowState
from . import health, schedules
from . import views as admin_views
from .display import (
    admin_url,
    can_act,
    error_summary,
    list_time,
    pretty_json,
    pretty_text,
    state_badge,
    workflow_link,
    workflow_links,
    workflow_progress,
)
from .nodes import WorkerHeartbeatAdmin, WorkflowNodeAdmin
from .readonly import ReadOnlyAdmin
from .starts import recent_failures

__all__ = (
    "ReadOnlyAdmin", "WorkerHeartbeatAdmin", "WorkflowAdmin", "WorkflowNodeAdmin", "pretty_json", "pretty_text",
    "state_badge",
)


#: Characters of the error column the list reads: its tooltip's length.
ERROR_HEAD_CHARS = 1000


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    change_form_template = "admin/django_dyrygent/workflow/change_form.html"
    list_display = (
        "display_name", "short_id", "state_badge", "progress", "why", "created", "duration",
    )
    list_display_links = ("display_name", "short_id")
    list_filter = ("state", "created_at")
    search_fields = ("^id", "name", "=nodes__task_id")
    date_hierarchy = "created_at"
    actions = ("cancel_workflows", "retry_workflows", "tick_workflows", "pause_workflows", "resume_workflows")
    readonly_fields = ("state_badge", "progress", "duration", "pretty_payload", "pretty_options",
                       "pretty_tasks_options", "parent_link", "subworkflow_links")
    list_defer = ("custom_payload", "options", "tasks_options", "error")
    json_values = {
        "custom_payload": lambda wf: wf.custom_payload,
        "options": lambda wf: wf.options,
        "tasks_options": lambda wf: wf.tasks_options,
    }
    fieldsets = (
        # State and progress are in the live panel above the fields.
        (None, {"fields": ("id", "name", "error")}),
        (_("Timing"), {"fields": ("created_at", "started_at", "finished_at", "duration", "deadline",
                                  "paused_at", "next_tick_at")}),
        (_("Counters"), {"fields": ("nodes_total", "nodes_done", "nodes_succeeded", "nodes_failed",
                                    "nodes_upstream_failed", "nodes_skipped", "ticks")}),
        (_("Data"), {"fields": ("pretty_payload", "pass_results", "pretty_options",
                                "pretty_tasks_options")}),
        # Which catalogue definition and parameters made it (see catalogue.py).
        (_("Catalogue"), {"fields": ("definition", "parameters", "trigger", "started_by", "idempotency_key")}),
        # Both ways: the node of another workflow that runs this one, and the workflows this one's nodes run.
        (_("Sub-workflows"), {"fields": ("parent_link", "subworkflow_links")}),
    )

    #: Groups of interchangeable siblings larger than this are drawn as one box.
    dag_collapse_threshold = graph.COLLAPSE_THRESHOLD
    #: Milliseconds between two refreshes of a running workflow's page.
    dag_poll_interval = 2000
    #: Seconds offered by the page's refresh menu (the person watching picks; the browser remembers).
    refresh_choices = (1, 2, 5, 10, 30, 60)
    #: Buttons of the change page: the list actions, applied to this workflow only.
    object_action_labels = {
        "cancel_workflows": _("Cancel"),
        "retry_workflows": _("Retry failed nodes"),
        "tick_workflows": _("Tick now"),
        "pause_workflows": _("Pause"),
        "resume_workflows": _("Resume"),
    }
    #: How many of the latest events the change page lists.
    events_shown = 50
    #: Fields of the change page that change while the workflow runs: status.json sends them again.
    live_fields = ("error", "started_at", "finished_at", "duration", "deadline", "paused_at", "next_tick_at",
                   "nodes_total", "nodes_done", "nodes_succeeded", "nodes_failed", "nodes_upstream_failed",
                   "nodes_skipped", "ticks")
    #: Shown before an action that cannot be undone (dag.js asks; without JavaScript it just runs).
    object_action_confirm = {
        "cancel_workflows": _("Cancel this workflow? Running tasks are revoked and waiting nodes canceled."),
    }

    class Media:
        css = {"all": ("django_dyrygent/dag.css",)}

    # -- list columns ---------------------------------------------------------------------

    @admin.display(description=_("name"), ordering="name")
    def display_name(self, obj: Workflow) -> str:
        return obj.name or "—"

    @admin.display(description=_("id"), ordering="id")
    def short_id(self, obj: Workflow) -> str:
        return format_html('<code title="{}">{}</code>', obj.pk, str(obj.pk)[:8])

    @admin.display(description=_("state"), ordering="state")
    def state_badge(self, obj: Workflow) -> str:
        return state_badge(obj.state, obj.get_state_display())

    @admin.display(description=_("created at"), ordering="created_at")
    def created(self, obj: Workflow) -> str:
        return list_time(obj.created_at)

    @admin.display(description=_("progress"))
    def progress(self, obj: Workflow) -> str:
        """Succeeded, failed and remaining parts, from the row counters: no COUNT query per row."""
        return workflow_progress(obj)

    @admin.display(description=_("why it failed"))
    def why(self, obj: Workflow) -> str:
        """The first failure (or why the engine ended it), recorded on the row when it ended."""
        head = getattr(obj, "error_head", None)  # annotated by get_queryset; the column is deferred in the list
        return error_summary(obj.error if head is None else head)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = dict(extra_context or {})
        context["worker_warning"] = health.warning()
        context["worker_warning_url"] = admin_url(self.admin_site, "workflow", "worker_warning")
        context["worker_warning_interval"] = self.dag_poll_interval
        if self.admin_site.is_registered(FailedStart) and request.user.has_perm("django_dyrygent.view_failedstart"):
            context["failed_starts"] = recent_failures()
            context["failed_starts_url"] = admin_url(self.admin_site, "failedstart", "changelist")
        return super().changelist_view(request, context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        # The list reads the head of the error only (list_defer keeps the column itself unread).
        return super().get_queryset(request).annotate(error_head=Left("error", ERROR_HEAD_CHARS))

    @admin.display(description=_("duration"))
    def duration(self, obj: Workflow) -> str:
        return graph.format_duration(obj.duration) or "—"

    @admin.display(description=_("run by"))
    def parent_link(self, obj: Workflow) -> str:
        """The parent workflow and its sub-workflow node that started this one."""
        node = obj.parent_node
        if node is None:
            return "—"
        parent = node.workflow
        node_url = admin_url(self.admin_site, "workflownode", "change", node.pk)
        return format_html("{} · {} <a href=\"{}\">{}</a>", workflow_link(self.admin_site, parent.pk, parent.name,
                                                                          parent.state),
                           _("node"), node_url, node.task_name or node.task_id)

    @admin.display(description=_("sub-workflows"))
    def subworkflow_links(self, obj: Workflow) -> str:
        """The workflows its sub-workflow nodes started, oldest first (a retried node starts a new one)."""
        children = Workflow.objects.filter(parent_node__workflow_id=obj.pk).order_by("created_at")
        return workflow_links(self.admin_site, children.only("id", "name", "state")[:100]) or "—"

    @admin.display(description=_("custom payload"))
    def pretty_payload(self, obj: Workflow) -> str:
        return self.pretty_value(obj, "custom_payload")

    @admin.display(description=_("tick options"))
    def pretty_options(self, obj: Workflow) -> str:
        return self.pretty_value(obj, "options")

    @admin.display(description=_("task options"))
    def pretty_tasks_options(self, obj: Workflow) -> str:
        return self.pretty_value(obj, "tasks_options")

    # -- actions ----------------------------------------------------------------------------

    @admin.action(description=_("Cancel selected workflows"), permissions=("change",))
    def cancel_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        reason = f"canceled by {request.user.get_username()} in the admin"
        changed, total = self._each(queryset, partial(engine.cancel, reason=reason))
        self._report(request, changed, total, ngettext(
            "%(count)d workflow canceled.", "%(count)d workflows canceled.", changed,
        ), ngettext(
            "%(count)d workflow had already ended.", "%(count)d workflows had already ended.", total - changed,
        ))

    @admin.action(description=_("Retry failed nodes of selected workflows"), permissions=("change",))
    def retry_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        pks = list(queryset.values_list("pk", flat=True))
        reset = {pk: engine.retry(pk) for pk in pks}
        retried = sum(1 for n in reset.values() if n)
        nodes = sum(reset.values())
        self.message_user(request, ngettext(
            "%(count)d workflow retried", "%(count)d workflows retried", retried,
        ) % {"count": retried} + ngettext(
            " (%(nodes)d node reset).", " (%(nodes)d nodes reset).", nodes,
        ) % {"nodes": nodes}, messages.SUCCESS if retried else messages.WARNING)
        if len(pks) > retried:
            idle = len(pks) - retried
            self.message_user(request, ngettext(
                "%(count)d workflow had nothing to retry.", "%(count)d workflows had nothing to retry.", idle,
            ) % {"count": idle}, messages.WARNING)

    @admin.action(description=_("Pause selected workflows"), permissions=("change",))
    def pause_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        reason = f"paused by {request.user.get_username()} in the admin"
        changed, total = self._each(queryset, partial(engine.pause, reason=reason))
        self._report(request, changed, total, ngettext(
            "%(count)d workflow paused.", "%(count)d workflows paused.", changed,
        ), ngettext(
            "%(count)d workflow was not running.", "%(count)d workflows were not running.", total - changed,
        ))

    @admin.action(description=_("Resume selected workflows"), permissions=("change",))
    def resume_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        reason = f"resumed by {request.user.get_username()} in the admin"
        changed, total = self._each(queryset, partial(engine.resume, reason=reason))
        self._report(request, changed, total, ngettext(
            "%(count)d workflow resumed.", "%(count)d workflows resumed.", changed,
        ), ngettext(
            "%(count)d workflow was not paused.", "%(count)d workflows were not paused.", total - changed,
        ))

    @staticmethod
    def _each(queryset: QuerySet[Workflow], change: Callable[[Any], bool]) -> tuple[int, int]:
        """Apply a one-workflow engine change to each selected workflow: (changed, selected)."""
        pks = list(queryset.values_list("pk", flat=True))
        return sum(1 for pk in pks if change(pk)), len(pks)

    def _report(self, request: HttpRequest, changed: int, total: int, done: str, left: str) -> None:
        """What changed, then what did not and why; when nothing changed, only the why (one message)."""
        if changed:
            self.message_user(request, done % {"count": changed}, messages.SUCCESS)
        if total > changed:
            self.message_user(request, left % {"count": total - changed}, messages.WARNING)

    @admin.action(description=_("Tick selected workflows now"), permissions=("change",))
    def tick_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        rows = list(queryset.values_list("pk", "state"))
        paused = sum(1 for _pk, state in rows if state == WorkflowState.PAUSED)
        if paused:
            self.message_user(request, ngettext(
                "%(count)d workflow is paused and was not ticked: a tick publishes nothing until it is resumed.",
                "%(count)d workflows are paused and were not ticked: a tick publishes nothing until they are "
                "resumed.", paused,
            ) % {"count": paused}, messages.WARNING)
            if paused == len(rows):
                return
        outcomes = [engine.tick(pk, scheduled=False) for pk, state in rows if state != WorkflowState.PAUSED]
        busy = outcomes.count("busy")
        ticked = len(outcomes) - busy - outcomes.count("missing")
        self.message_user(request, ngettext(
            "%(count)d workflow ticked.", "%(count)d workflows ticked.", ticked,
        ) % {"count": ticked}, messages.SUCCESS)
        if busy:
            self.message_user(request, ngettext(
                "%(count)d workflow was busy (another worker holds it); it was left to that worker.",
                "%(count)d workflows were busy (another worker holds them); they were left to that worker.",
                busy,
            ) % {"count": busy}, messages.WARNING)

    # -- URLs: status JSON, SVG fragment, one-object actions -----------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return admin_views.urls(self) + [
            path("<path:object_id>/status.json", view(self.status_view), name="%s_%s_status" % info),
            path("<path:object_id>/dag/", view(self.dag_view), name="%s_%s_dag" % info),
            path("<path:object_id>/timeline/", view(self.timeline_view), name="%s_%s_timeline" % info),
            path("grid/<str:name>/", view(self.grid_view), name="%s_%s_grid" % info),
            path("schedules/", view(self.schedules_view), name="%s_%s_schedules" % info),
            path("worker-warning.json", view(self.worker_warning_view), name="%s_%s_worker_warning" % info),
            path("<path:object_id>/act/<str:action>/", view(require_POST(self.act_view)),
                 name="%s_%s_act" % info),
        ] + super().get_urls()

    def status_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """Everything on the change page that can change, polled by dag.js while the workflow runs.

        Pieces of HTML (fields, events, progress bar) are rendered here the way
        the page rendered them, escaped, so the page swaps them in as they are.
        """
        obj: Workflow = self._get_viewable(request, object_id)
        items, edges = graph.collapse(graph.load(obj, details=False), self.dag_collapse_threshold)
        return JsonResponse({
            "id": str(obj.pk),
            "state": obj.state,
            "state_label": str(obj.get_state_display()),
            "final": settled(obj, items),
            "nodes_total": obj.nodes_total,
            "nodes_done": obj.nodes_done,
            "nodes_failed": obj.nodes_failed,
            "nodes_upstream_failed": obj.nodes_upstream_failed,
            "nodes_succeeded": obj.nodes_succeeded,
            "duration": graph.format_duration(obj.duration),
            "progress": str(workflow_progress(obj, "dy-progress")),
            "fields": {name: str(self.readonly_html(obj, name)) for name in self.live_fields},
            "events": render_to_string("django_dyrygent/events.html", {"events": self.latest_events(obj)},
                                       request=request),
            "actions": {**{name: bool(can_act(obj, name)) for name in self.object_action_labels},
                        "run_again": obj.is_final},
            "shape": graph.shape(items, edges),
            "items": {item.id: graph.item_status(item) for item in items},
            "worker_warning": health.banner(obj),
        })

    def worker_warning_view(self, request: HttpRequest) -> JsonResponse:
        """The workflow list's banner, polled by dag.js: it comes and goes with the workers' heartbeats."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        return JsonResponse({"worker_warning": health.banner()})

    def readonly_html(self, obj: Workflow, name: str) -> str:
        """A read-only field as the change form shows it (Django's AdminReadonlyField rules)."""
        field, _attr, value = lookup_field(name, obj, self)
        if field is None:
            return value if hasattr(value, "__html__") else linebreaksbr(conditional_escape(value))
        return linebreaksbr(display_for_field(value, field, self.get_empty_value_display()))

    def latest_events(self, obj: Workflow) -> list[dict[str, Any]]:
        """The latest events, each with a readable name of its node (one query for the nodes)."""
        events: list[dict[str, Any]] = [
            dict(event) for event in WorkflowEvent.objects.filter(workflow_id=obj.pk).order_by("-created_at", "-id")
            .values("created_at", "old_state", "new_state", "reason", "node_id")[: self.events_shown]
        ]
        node_ids = {e["node_id"] for e in events if e["node_id"]}
        nodes: dict[int, dict[str, Any]] = {
            n["id"]: dict(n) for n in WorkflowNode.objects.filter(pk__in=node_ids)
            .values("id", "task_name", "task_id", "kind", "position", "signature")
        }
        for event in events:
            node = nodes.get(event["node_id"])
            if node:
                event["node_label"], event["node_title"] = graph.node_names(node)
        return events

    def dag_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The SVG alone, fetched again when the graph changed shape or the workflow ended."""
        obj = self._get_viewable(request, object_id)
        return HttpResponse(render_to_string(
            "django_dyrygent/dag.svg", self.dag_context(obj), request=request,
        ), content_type="image/svg+xml; charset=utf-8")

    def timeline_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The timeline panel alone: its zoom and pages, and a refresh while the workflow runs."""
        obj = self._get_viewable(request, object_id)
        return HttpResponse(render_to_string(
            "django_dyrygent/timeline.html", self.timeline_context(request, obj), request=request,
        ))

    def grid_view(self, request: HttpRequest, name: str) -> HttpResponse:
        """The last runs of one catalogue definition, side by side (runs as columns, steps as rows)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        runs = grid.load(name)
        change_head, change_tail = admin_url(self.admin_site, "workflow", "change", 0).rsplit("/0/", 1)
        node_head, node_tail = admin_url(self.admin_site, "workflownode", "change", 0).rsplit("/0/", 1)
        return TemplateResponse(request, "admin/django_dyrygent/workflow/grid.html", {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Past runs of %(name)s") % {"name": name},
            "grid": runs,
            "grid_svg": grid.svg_markup(
                runs, lambda pk: f"{change_head}/{pk}/{change_tail}", lambda pk: f"{node_head}/{pk}/{node_tail}"
            ),
            "legend": [(s, NodeState(s).label) for s in graph.STATE_PRIORITY],
            "list_url": admin_url(self.admin_site, "workflow", "changelist") + f"?definition={quote(name, safe='')}",
        })

    def schedules_view(self, request: HttpRequest) -> HttpResponse:
        """Which definitions Celery beat starts, when next, and how each one's last scheduled start went."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        change_head, change_tail = admin_url(self.admin_site, "workflow", "change", 0).rsplit("/0/", 1)
        rows = [
            {"entry": entry, "badge": state_badge(entry.last_state, entry.last_state.replace("_", " ").lower())
             if entry.last_state else "",
             "workflow_url": f"{change_head}/{entry.last_workflow.pk}/{change_tail}" if entry.last_workflow else "",
             "parameters": json.dumps(entry.parameters, sort_keys=True) if entry.parameters else ""}
            for entry in schedules.entries()
        ]
        return TemplateResponse(request, "admin/django_dyrygent/workflow/schedules.html", {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Scheduled workflows"),
            "rows": rows,
            "failed_starts_url": admin_url(self.admin_site, "failedstart", "changelist")
            if self.admin_site.is_registered(FailedStart) else "",
        })

    def act_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponseRedirect:
        """Run one of the actions on this workflow only, then come back to its page."""
        obj = self._get_viewable(request, object_id)
        entry = self.get_actions(request).get(action)  # already filtered by the actions' permissions
        if entry is None:
            raise PermissionDenied
        # Django 6.1 returns an Action (indexing it is deprecated), earlier versions a tuple.
        func = getattr(entry, "func", None) or entry[0]
        func(self, request, self.get_queryset(request).filter(pk=obj.pk))
        return HttpResponseRedirect(admin_url(self.admin_site, "workflow", "change", obj.pk))

    # -- change page ------------------------------------------------------------------------

    def dag_context(self, obj: Workflow) -> dict[str, Any]:
        items, edges = graph.collapse(graph.load(obj), self.dag_collapse_threshold)
        drawing = graph.layout(items, edges)
        # reverse() once, not once per node.
        node_head, node_tail = admin_url(self.admin_site, "workflownode", "change", 0).rsplit("/0/", 1)
        list_url = admin_url(self.admin_site, "workflownode", "changelist")

        def url_for(item: Item) -> str:
            if item.is_group:
                return f"{list_url}?workflow={obj.pk}&task_name={quote(item.task_name, safe='')}"
            return f"{node_head}/{item.node['id']}/{node_tail}"

        return {
            "workflow": obj, "drawing": drawing, "shape": graph.shape(items, edges),
            "settled": settled(obj, items), "progress": workflow_progress(obj, "dy-progress"),
            "svg_markup": graph.svg_markup(drawing, url_for),
        }

    def timeline_context(self, request: HttpRequest, obj: Workflow) -> dict[str, Any]:
        """The Gantt of ``obj``: a task name to zoom into and a page come from the query string."""
        group = request.GET.get("timeline_group") or None
        try:
            page = int(request.GET.get("timeline_page", 1))
        except ValueError:
            page = 1
        chart = timeline.load(obj, group=group, page=page)
        page_url = admin_url(self.admin_site, "workflow", "change", obj.pk)
        node_head, node_tail = admin_url(self.admin_site, "workflownode", "change", 0).rsplit("/0/", 1)

        def url_for(row: timeline.Row) -> str:
            if row.is_group:
                return f"{page_url}?timeline_group={quote(str(row.key), safe='')}#dy-timeline"
            return f"{node_head}/{row.key}/{node_tail}"

        def zoom_url(page_number: int) -> str:
            return f"{page_url}?timeline_group={quote(group or '', safe='')}&timeline_page={page_number}#dy-timeline"

        return {
            "timeline": chart, "timeline_svg": timeline.svg_markup(chart, url_for), "timeline_all_url":
            f"{page_url}#dy-timeline", "timeline_prev_url": zoom_url(chart.page - 1) if chart.page > 1 else "",
            "timeline_next_url": zoom_url(chart.page + 1) if chart.page < chart.pages else "",
            "timeline_row_limit": timeline.ROW_LIMIT,
        }

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id) if request.method == "GET" else None
        context = dict(extra_context or {})
        if obj is not None and self.has_view_permission(request, obj):
            events = self.latest_events(obj)
            actions = self.get_actions(request)
            context.update(self.dag_context(obj))
            context.update(self.timeline_context(request, obj))
            # Bigger workflows are polled less often: a status costs O(nodes) to build.
            poll_interval = max(self.dag_poll_interval, obj.nodes_total // 5)
            context.update({
                "worker_warning": health.warning(obj),
                "events": events,
                "legend": [(s, NodeState(s).label) for s in graph.STATE_PRIORITY],
                "status_url": admin_url(self.admin_site, "workflow", "status", obj.pk),
                "dag_url": admin_url(self.admin_site, "workflow", "dag", obj.pk),
                "nodes_url": admin_url(self.admin_site, "workflownode", "changelist") + f"?workflow={obj.pk}",
                "poll_interval": poll_interval,
                "refresh_choices": self.refresh_choices,
                # The menu shows the choice nearest the page's own interval until the person picks one.
                "refresh_default": min(self.refresh_choices, key=lambda s: abs(s * 1000 - poll_interval)),
                # Every permitted action is on the page; the ones that cannot act now are hidden,
                # and dag.js shows them when the workflow gets there.
                "object_actions": [
                    {"name": name, "url": admin_url(self.admin_site, "workflow", "act", obj.pk, name),
                     "label": label, "hidden": not can_act(obj, name),
                     "confirm": self.object_action_confirm.get(name, "")}
                    for name, label in self.object_action_labels.items() if name in actions
                ],
            })
        return super().change_view(request, object_id, form_url, context)


def settled(workflow: Workflow, items: list[Item]) -> bool:
    """Nothing will change any more: the workflow ended and its callbacks (queued when it ended) too."""
    return workflow.is_final and not any(
        node["state"] in NODE_ACTIVE for item in items for node in item.nodes
    )
