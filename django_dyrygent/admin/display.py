"""HTML pieces of the admin pages: state badges, the three-colour progress bar, folded JSON.

Kept apart from ``admin.py`` so the list, the change page and the status
endpoint (which sends the same pieces to ``dag.js``) render them one way.
Colours come from ``dag.css`` classes and sizes from SVG attributes, never
from inline styles: the pages work under a strict Content-Security-Policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from ..states import WORKFLOW_FINAL, WORKFLOW_RUNNABLE, WorkflowState

if TYPE_CHECKING:
    from django.contrib.admin import AdminSite

    from ..models import Workflow

def admin_url(site: AdminSite, model: str, view: str, *args: Any) -> str:
    """The URL of one of this app's admin views on ``site``: ``view`` of ``model`` ("workflow", "workflownode").

    Every link of the admin goes through here: the ``admin`` namespace,
    resolved to ``site``'s instance (``current_app``), so a second AdminSite
    links to its own pages.
    """
    return reverse(f"admin:django_dyrygent_{model}_{view}", args=args, current_app=site.name)


#: A JSON value longer than this (pretty-printed) is cut on the page, with a link to the whole value.
JSON_SHOWN_CHARS = 3000
#: Width of the progress bar's drawing (the CSS scales it).
BAR_UNITS = 100


def workflow_link(site: AdminSite, workflow_id: Any, name: str = "", state: str = "") -> str:
    """A link to a workflow's page: its name (or "workflow"), its short id and, when given, its state."""
    url = admin_url(site, "workflow", "change", workflow_id)
    badge = state_badge(state) if state else ""
    return format_html('<a href="{}">{} <code>{}</code></a> {}', url, name or _("workflow"), str(workflow_id)[:8],
                       badge)


def workflow_links(site: AdminSite, workflows: Iterable[Workflow]) -> str:
    """``workflow_link`` of each workflow, one a line; empty for none."""
    rows = ((workflow_link(site, w.pk, w.name, w.state),) for w in workflows)
    return format_html_join(mark_safe("<br>"), "{}", rows)


def state_badge(state: str, label: str | None = None) -> str:
    """A coloured badge; colours come from dag.css classes, never inline styles (CSP)."""
    return format_html('<span class="dy-badge dy-s-{}">{}</span>', state, label or state)


def can_act(workflow: Workflow, action: str) -> bool:
    """Whether the change page's button for ``action`` would change anything now."""
    if action == "retry_workflows":
        return workflow.state != WorkflowState.INITIAL and workflow.nodes_failed > 0
    if action == "pause_workflows":
        return workflow.state == WorkflowState.RUNNING
    if action == "resume_workflows":
        return workflow.state == WorkflowState.PAUSED
    if action == "tick_workflows":
        # A paused workflow's tick does nothing (nothing is published until resume): no button.
        return workflow.state in WORKFLOW_RUNNABLE
    return workflow.state not in WORKFLOW_FINAL  # cancel


def short_time(value: datetime | None, shown: str = "%H:%M:%S") -> str:
    """``09:08:55`` in the current time zone, the date in its tooltip: one short line in the node list."""
    if not value:
        return "—"
    value = timezone.localtime(value)
    return format_html('<time datetime="{}" title="{}">{}</time>', value.isoformat(),
                       value.strftime("%Y-%m-%d %H:%M:%S.%f")[:23], value.strftime(shown))


def list_time(value: datetime | None) -> str:
    """``2026-12-07 16:21:05`` to the second, able to wrap between date and time in a narrow column."""
    return short_time(value, "%Y-%m-%d %H:%M:%S")


def progress_parts(total: int, succeeded: int, failed: int, done: int) -> dict[str, float]:
    """Widths (of BAR_UNITS) of the succeeded, failed, other finished (skipped) and remaining parts."""
    if not total:
        return {"ok": 0, "failed": 0, "other": 0, "rest": BAR_UNITS}
    other = max(done - succeeded - failed, 0)
    scale = BAR_UNITS / total
    ok, bad, rest = round(succeeded * scale, 2), round(failed * scale, 2), round(other * scale, 2)
    # A part of one node in ten thousand still shows: a failure must never disappear in rounding.
    ok, bad, rest = (max(width, 0.8) if count else 0 for width, count in
                     ((ok, succeeded), (bad, failed), (rest, other)))
    return {"ok": ok, "failed": bad, "other": rest, "rest": max(round(BAR_UNITS - ok - bad - rest, 2), 0)}


def progress_text(total: int, done: int, failed: int, upstream_failed: int = 0) -> str:
    """``9 / 12 done, 1 failed, 6 upstream failed``: ``failed`` counts all three, ``upstream_failed`` its part
    that never ran, shown apart so that one failing task does not read as seven."""
    text = _("%(done)d / %(total)d done") % {"done": done, "total": total}
    own = failed - upstream_failed
    if own:
        text += ", " + ngettext("%(count)d failed", "%(count)d failed", own) % {"count": own}
    if upstream_failed:
        text += ", " + ngettext("%(count)d upstream failed", "%(count)d upstream failed", upstream_failed) % {
            "count": upstream_failed,
        }
    return text


def workflow_progress(wf: Workflow, element_id: str = "") -> str:
    """The bar and its count for a workflow row, from its counters (no query)."""
    parts = progress_parts(wf.nodes_total, wf.nodes_succeeded, wf.nodes_failed, wf.nodes_done)
    text = progress_text(wf.nodes_total, wf.nodes_done, wf.nodes_failed, wf.nodes_upstream_failed)
    return format_html(
        '{} <span class="dy-count"{}>{}</span>',
        progress_bar(parts, text, element_id),
        format_html(' id="{}-text"', element_id) if element_id else "",
        text,
    )


#: Characters of a workflow's error shown in the list (the whole of it is on its page and in the tooltip).
ERROR_SHOWN_CHARS = 120


def error_summary(error: str) -> str:
    """A workflow's error in a list cell: its first line, cut, the whole text in the tooltip."""
    if not error:
        return "—"
    line = error.strip().splitlines()[0]
    shown = line if len(line) <= ERROR_SHOWN_CHARS else line[: ERROR_SHOWN_CHARS - 1] + "…"
    return format_html('<span class="dy-error" title="{}">{}</span>', error, shown)


def progress_bar(parts: dict[str, float], title: str, element_id: str = "") -> str:
    """Succeeded (green), failed (red), skipped (light grey) and remaining (pale) side by side."""
    x: float = 0
    rects = []
    for name in ("ok", "failed", "other", "rest"):
        rects.append(format_html(
            '<rect class="dy-part-{}" x="{}" y="0" width="{}" height="10"/>', name, f"{x:g}", f"{parts[name]:g}",
        ))
        x += parts[name]
    return format_html(
        '<svg class="dy-progress"{} viewBox="0 0 {} 10" preserveAspectRatio="none" role="img" '
        'aria-label="{}"><title>{}</title>{}</svg>',
        format_html(' id="{}"', element_id) if element_id else "", BAR_UNITS, title, title,
        format_html("".join(["{}"] * len(rects)), *rects),
    )


def pretty_json(value: Any, full_url: str | None = None) -> str:
    """Indented JSON in a <pre>; past JSON_SHOWN_CHARS cut, with a link to the whole value."""
    if value in (None, "", {}, []):
        return "—"
    text = json.dumps(value, indent=2, sort_keys=True, cls=DjangoJSONEncoder, ensure_ascii=False)
    return pretty_text(text, full_url)


def pretty_text(text: str | None, full_url: str | None = None) -> str:
    if not text:
        return "—"
    if len(text) <= JSON_SHOWN_CHARS:
        return format_html('<pre class="dy-pre">{}</pre>', text)
    note = _("Showing the first %(shown)s of %(size)s characters.") % {
        "shown": f"{JSON_SHOWN_CHARS:,}", "size": f"{len(text):,}",
    }
    link = format_html(' <a href="{}">{}</a>', full_url, _("Full value")) if full_url else ""
    return format_html(
        '<pre class="dy-pre dy-cut">{}…</pre><p class="dy-more">{}{}</p>', text[:JSON_SHOWN_CHARS], note, link,
    )
