"""The admin's "Start a workflow" pages and "Run again", hooked into ``WorkflowAdmin.get_urls``.

They need the custom permission ``django_dyrygent.start_workflow`` (and a
definition's own ``permission`` when it names one); the admin site's
``admin_view`` wrapper adds login, staff and CSRF protection. A valid form
starts the workflow and redirects to its change page, where the DAG is drawn
live; an invalid one is shown again with its errors, the Django way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, update_wrapper
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from .. import launch
from ..catalogue import START_PERMISSION, Definition, UnknownDefinition, registry
from ..states import Trigger
from .display import admin_url

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

    from ..models import Workflow

    #: The workflows' ModelAdmin these views are hooked into (``WorkflowAdmin.get_urls``).
    WorkflowAdmin = ModelAdmin[Workflow]

#: A view of this module: ``view(model_admin, request, *url_arguments)``.
View = Callable[..., HttpResponse]


def urls(model_admin: WorkflowAdmin) -> list[URLPattern]:
    """URL patterns to put before the ModelAdmin's own (they end in a catch-all)."""
    info = model_admin.opts.app_label, model_admin.opts.model_name

    def wrap(view: View, *decorators: Callable[[View], View]) -> Callable[..., HttpResponse]:
        func: Callable[..., HttpResponse] = partial(view, model_admin)
        update_wrapper(func, view)
        for decorator in decorators:
            func = decorator(func)
        return model_admin.admin_site.admin_view(func)

    return [
        path("start/", wrap(catalogue_view), name="%s_%s_start_list" % info),
        path("start/<str:name>/", wrap(start_view), name="%s_%s_start" % info),
        path("<path:object_id>/run-again/", wrap(run_again_view, require_POST), name="%s_%s_run_again" % info),
    ]


def can_start(request: HttpRequest) -> bool:
    return request.user.has_perm(START_PERMISSION)


def _context(model_admin: WorkflowAdmin, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        **extra,
    }


def _definition_for(request: HttpRequest, name: str) -> Definition:
    if not can_start(request):
        raise PermissionDenied
    try:
        definition = registry.get(name)
    except UnknownDefinition as exc:
        raise Http404(str(exc)) from None
    if not definition.user_can_start(request.user):
        raise PermissionDenied
    return definition


def catalogue_view(model_admin: WorkflowAdmin, request: HttpRequest) -> TemplateResponse:
    """The definitions this user may start, with their descriptions."""
    if not can_start(request):
        raise PermissionDenied
    return TemplateResponse(request, "admin/django_dyrygent/catalogue/index.html", _context(
        model_admin, request, _("Start a workflow"), definitions=registry.for_user(request.user),
    ))


def _render_form(
    model_admin: WorkflowAdmin, request: HttpRequest, definition: Definition, form: forms.BaseForm, status: int = 200
) -> TemplateResponse:
    # The stubs want a ModelForm; AdminForm and AdminErrorList only read the fields and the errors.
    adminform = helpers.AdminForm(form, [(None, {"fields": list(form.fields)})], {})  # type: ignore[arg-type]
    return TemplateResponse(request, "admin/django_dyrygent/catalogue/start.html", _context(
        model_admin, request, _("Start %(name)s") % {"name": definition.name},
        definition=definition, form=form, adminform=adminform,
        errors=helpers.AdminErrorList(form, []),  # type: ignore[arg-type]
        list_url=admin_url(model_admin.admin_site, "workflow", "start_list"),
    ), status=status)


def _started(
    model_admin: WorkflowAdmin, request: HttpRequest, outcome: launch.Outcome, definition: Definition
) -> HttpResponseRedirect:
    wf = outcome.workflow
    assert wf is not None, "launch() returns the started (or replayed) workflow"
    messages.success(request, _("Started %(name)s: workflow %(id)s.") % {"name": definition.name, "id": wf.pk})
    return HttpResponseRedirect(admin_url(model_admin.admin_site, "workflow", "change", wf.pk))


def start_view(model_admin: WorkflowAdmin, request: HttpRequest, name: str) -> HttpResponse:
    """GET: the definition's form with its initial values; POST: start, or show the errors."""
    definition = _definition_for(request, name)
    if request.method != "POST":
        return _render_form(model_admin, request, definition, definition.new_form())
    form = definition.new_form(data=request.POST, files=request.FILES)
    if form.is_valid():
        try:
            outcome = launch.launch(definition, form, trigger=Trigger.ADMIN, user=request.user)
        except launch.ParameterError:
            pass  # the factory or the engine refused these values: the form carries why
        else:
            return _started(model_admin, request, outcome, definition)
    return _render_form(model_admin, request, definition, form)


def run_again_view(model_admin: WorkflowAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """Start a finished workflow's definition again with the parameters it recorded."""
    wf = model_admin.get_object(request, object_id)
    if wf is None:
        raise Http404(f"No workflow with id {object_id!r}.")
    if not model_admin.has_view_permission(request, wf) or not wf.definition:
        raise PermissionDenied
    definition = _definition_for(request, wf.definition)
    change_url = admin_url(model_admin.admin_site, "workflow", "change", wf.pk)
    if not wf.is_final:
        messages.warning(request, _("Workflow %(id)s is still %(state)s: run it again once it has ended.")
                         % {"id": wf.pk, "state": wf.state})
        return HttpResponseRedirect(change_url)
    try:
        form = launch.valid_form(definition, wf.parameters)
        outcome = launch.launch(definition, form, trigger=Trigger.ADMIN, user=request.user)
    except launch.ParameterError as exc:
        # The definition's form changed since: show what no longer passes, prefilled.
        messages.error(request, _("The recorded parameters no longer pass the form; correct them below."))
        return _render_form(model_admin, request, definition, exc.form)
    return _started(model_admin, request, outcome, definition)
