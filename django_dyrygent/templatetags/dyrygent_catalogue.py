"""Catalogue buttons for the workflow admin pages: small tags, so the page templates change by one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import template
from django.template import Context
from django.template.loader import render_to_string
from django.urls import reverse

from ..catalogue import START_PERMISSION, registry

if TYPE_CHECKING:
    from ..models import Workflow

register = template.Library()


@register.simple_tag(takes_context=True)
def dyrygent_start_link(context: Context) -> str:
    """"Start a workflow" on the list page, for users who may start at least one definition."""
    request = context["request"]
    if not request.user.has_perm(START_PERMISSION) or not registry.for_user(request.user):
        return ""
    return render_to_string("admin/django_dyrygent/catalogue/start_link.html", {
        "url": reverse("admin:django_dyrygent_workflow_start_list"),
    })


@register.simple_tag(takes_context=True)
def dyrygent_run_again(context: Context, workflow: Workflow | None) -> str:
    """"Run again with the same parameters" on a workflow started from a definition.

    Rendered hidden while the workflow runs: the live page shows it when the
    status says the workflow ended (``dag.js``, ``actions.run_again``).
    """
    request = context["request"]
    if workflow is None or not workflow.definition or workflow.definition not in registry:
        return ""
    if not registry.get(workflow.definition).user_can_start(request.user):
        return ""
    return render_to_string("admin/django_dyrygent/catalogue/run_again.html", {
        "url": reverse("admin:django_dyrygent_workflow_run_again", args=[workflow.pk]),
        "workflow": workflow,
        "hidden": not workflow.is_final,
    }, request=request)
