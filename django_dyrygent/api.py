"""A small JSON API: list and start catalogue definitions; read, cancel, retry, pause, resume or signal a workflow.

Mounted by the project (``path("dyrygent/", include("django_dyrygent.urls"))``).
Authentication is the project's own: whatever its middleware and backends put
on ``request.user`` (a session, a remote user, ...). Answers are JSON, errors
included: 401 anonymous, 403 missing permission or failed CSRF check, 404
unknown name or id, 405 wrong method, 400 bad input (with the form's errors),
409 a conflicting idempotency key or an impossible cancel/retry/pause/resume.

CSRF: a session cookie is sent by the browser on its own, so unsafe requests
are checked exactly as Django checks a form post (``X-CSRFToken`` header with
the ``csrftoken`` cookie's value), but a failure is answered in JSON rather
than with Django's HTML page. A project that authenticates API clients by a
header token, not by a cookie, can wrap these views in ``csrf_exempt``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeAlias, cast

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import NoReverseMatch, reverse
from django.views.decorators.csrf import csrf_exempt

from . import engine, launch
from .catalogue import START_PERMISSION, Definition, UnknownDefinition, registry
from .models import Workflow, WorkflowNode

P = ParamSpec("P")
#: A view of this API: ``view(request, *url_arguments)``.
ApiView: TypeAlias = Callable[Concatenate[HttpRequest, P], HttpResponse]

#: Request header carrying the client's idempotency key (``idempotency_key`` in the body works too).
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_BODY = 64 * 1024


def _no_view(request: HttpRequest) -> HttpResponse:
    """What the CSRF check is built around; never called: only its checks run (not ``csrf_exempt``)."""
    raise AssertionError("_CsrfCheck runs no view")


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, answering with the reason instead of an HTML page."""

    def _reject(self, request: HttpRequest, reason: str) -> str:
        return reason

    def failure(self, request: HttpRequest) -> str | None:
        """Why Django would refuse ``request``, or None."""
        self.process_request(request)
        # process_view returns what _reject returns: here the reason, not a response.
        return cast("str | None", self.process_view(request, _no_view, (), {}))


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def endpoint(methods: Sequence[str], permission: str | None = None) -> Callable[[ApiView[P]], ApiView[P]]:
    """Method, authentication, CSRF and model permission checks shared by every view."""

    def decorator(view: ApiView[P]) -> ApiView[P]:
        @csrf_exempt  # checked below, so that a failure is a JSON answer
        @wraps(view)
        def wrapper(request: HttpRequest, *args: P.args, **kwargs: P.kwargs) -> HttpResponse:
            if request.method not in methods:
                response = error(405, f"Method {request.method} not allowed; use {', '.join(methods)}.")
                response["Allow"] = ", ".join(methods)
                return response
            if not request.user.is_authenticated:
                return error(401, "Authentication required: log in first.")
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                reason = _CsrfCheck(_no_view).failure(request)
                if reason:
                    return error(403, f"CSRF check failed: {reason}. Send the csrftoken cookie's value "
                                      "in the X-CSRFToken header.")
            if permission and not request.user.has_perm(permission):
                return error(403, f"Permission {permission} required.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def _json_body(request: HttpRequest) -> dict[str, Any] | JsonResponse:
    """The request's JSON object ({} when empty), or a 400 response."""
    if len(request.body) > MAX_BODY:
        return error(400, f"Request body over {MAX_BODY} bytes.")
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, f"Request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, f"Request body must be a JSON object, not {type(body).__name__}.")
    return body


def _definition(request: HttpRequest, name: str) -> Definition | JsonResponse:
    """The definition the user may start, or the 404/403 response."""
    try:
        definition = registry.get(name)
    except UnknownDefinition as exc:
        return error(404, str(exc))
    if not definition.user_can_start(request.user):
        return error(403, f"Permission {definition.permission} required to start {name}.")
    return definition


def _workflow(workflow_id: object) -> Workflow | JsonResponse:
    """The workflow, or the 404 response."""
    try:
        pk = uuid.UUID(str(workflow_id))
    except ValueError:
        return error(404, f"No workflow with id {workflow_id!r}.")
    wf = Workflow.objects.filter(pk=pk).first()
    if wf is None:
        return error(404, f"No workflow with id {workflow_id!r}.")
    return wf


def describe_definition(definition: Definition) -> dict[str, Any]:
    return {
        "name": definition.name,
        "title": definition.title,
        "description": definition.description,
        "overlap": definition.overlap,
        "parameters": definition.fields_schema(),
    }


def describe_workflow(wf: Workflow) -> dict[str, Any]:
    try:
        admin_url = reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])
    except NoReverseMatch:
        admin_url = None
    return {
        "id": str(wf.pk),
        "name": wf.name,
        "state": wf.state,
        "definition": wf.definition,
        "parameters": wf.parameters,
        "trigger": wf.trigger,
        "started_by": wf.started_by,
        "nodes_total": wf.nodes_total,
        "nodes_done": wf.nodes_done,
        "nodes_succeeded": wf.nodes_succeeded,
        "nodes_failed": wf.nodes_failed,
        "created_at": wf.created_at.isoformat() if wf.created_at else None,
        "started_at": wf.started_at.isoformat() if wf.started_at else None,
        "finished_at": wf.finished_at.isoformat() if wf.finished_at else None,
        "paused_at": wf.paused_at.isoformat() if wf.paused_at else None,
        "deadline": wf.deadline.isoformat() if wf.deadline else None,
        "error": wf.error,
        # The signals it waits for now: what a client may send to /signal/<name>/.
        "waiting_for": sorted(set(
            wf.nodes.filter(state=WorkflowNode.State.WAITING, kind=WorkflowNode.Kind.WAIT)
            .values_list("task_name", flat=True)[:100]
        )) if wf.state in (Workflow.State.RUNNING, Workflow.State.PAUSED) else [],
        "admin_url": admin_url,
    }


@endpoint(["GET"], START_PERMISSION)
def definitions(request: HttpRequest) -> HttpResponse:
    """The definitions this user may start."""
    return JsonResponse({"definitions": [describe_definition(d) for d in registry.for_user(request.user)]})


@endpoint(["GET"], START_PERMISSION)
def definition(request: HttpRequest, name: str) -> HttpResponse:
    found = _definition(request, name)
    return found if isinstance(found, JsonResponse) else JsonResponse(describe_definition(found))


@endpoint(["POST"], START_PERMISSION)
def start(request: HttpRequest, name: str) -> HttpResponse:
    """Body: ``{"params": {...}, "idempotency_key": "..."}`` (both optional).

    201 with the new workflow; 200 with the first one when the idempotency
    key was seen before with the same request; 400 with ``errors`` (the
    form's, by field, ``__all__`` for the whole form) when a parameter is bad.
    """
    found = _definition(request, name)
    if isinstance(found, JsonResponse):
        return found
    body = _json_body(request)
    if isinstance(body, JsonResponse):
        return body
    unknown = sorted(set(body) - {"params", "idempotency_key"})
    if unknown:
        return error(400, f"Unknown field(s) {', '.join(unknown)}; the body takes params and idempotency_key.")
    key = request.headers.get(IDEMPOTENCY_HEADER, body.get("idempotency_key"))
    try:
        outcome = launch.start(found, body.get("params", {}), trigger="api", user=request.user,
                               idempotency_key=key)
    except launch.ParameterError as exc:
        return error(400, str(exc), errors={
            field: [e["message"] for e in errors] for field, errors in exc.errors.items()
        })
    except launch.IdempotencyConflict as exc:
        return error(409, str(exc))
    except launch.StartError as exc:
        return error(400, str(exc))
    assert outcome.workflow is not None, "launch.start() returns the started (or replayed) workflow"
    data = describe_workflow(outcome.workflow)
    data["replayed"] = not outcome.created
    return JsonResponse(data, status=201 if outcome.created else 200)


@endpoint(["GET"], "django_dyrygent.view_workflow")
def status(request: HttpRequest, workflow_id: str) -> HttpResponse:
    wf = _workflow(workflow_id)
    return wf if isinstance(wf, JsonResponse) else JsonResponse(describe_workflow(wf))


@endpoint(["POST"], "django_dyrygent.change_workflow")
def cancel(request: HttpRequest, workflow_id: str) -> HttpResponse:
    wf = _workflow(workflow_id)
    if isinstance(wf, JsonResponse):
        return wf
    if not engine.cancel(wf.pk, reason=f"canceled by {request.user.get_username()} through the API"):
        wf.refresh_from_db()
        return error(409, f"Workflow {wf.pk} already ended {wf.state}; nothing to cancel.")
    wf.refresh_from_db()
    return JsonResponse(describe_workflow(wf))


@endpoint(["POST"], "django_dyrygent.change_workflow")
def retry(request: HttpRequest, workflow_id: str) -> HttpResponse:
    wf = _workflow(workflow_id)
    if isinstance(wf, JsonResponse):
        return wf
    try:
        reset = engine.retry(wf.pk)
    except ValidationError as exc:
        return error(409, "; ".join(exc.messages))
    wf.refresh_from_db()
    if not reset:
        return error(409, f"Workflow {wf.pk} is {wf.state} with no failed or canceled node to retry.")
    return JsonResponse({**describe_workflow(wf), "nodes_reset": reset})


def _change(request: HttpRequest, workflow_id: str, change: Callable[..., bool], verb: str,
            expected: str) -> HttpResponse:
    """Apply an engine change that answers whether the state changed; 409 when it did not."""
    wf = _workflow(workflow_id)
    if isinstance(wf, JsonResponse):
        return wf
    changed = change(wf.pk, reason=f"{verb}d by {request.user.get_username()} through the API")
    wf.refresh_from_db()
    if not changed:
        return error(409, f"Workflow {wf.pk} is {wf.state}, not {expected}; nothing to {verb}.")
    return JsonResponse(describe_workflow(wf))


@endpoint(["POST"], "django_dyrygent.change_workflow")
def pause(request: HttpRequest, workflow_id: str) -> HttpResponse:
    """409 unless the workflow was RUNNING."""
    return _change(request, workflow_id, engine.pause, "pause", "RUNNING")


@endpoint(["POST"], "django_dyrygent.change_workflow")
def resume(request: HttpRequest, workflow_id: str) -> HttpResponse:
    """409 unless the workflow was PAUSED."""
    return _change(request, workflow_id, engine.resume, "resume", "PAUSED")


@endpoint(["POST"], "django_dyrygent.signal_workflow")
def signal(request: HttpRequest, workflow_id: str, name: str) -> HttpResponse:
    """Body ``{"payload": ...}`` (optional): ``wf.signal(name, payload)``; 200 with ``completed``.

    ``completed`` is 0 when no node of that name is waiting (not reached yet,
    already signalled, or the workflow ended): a repeated request is harmless.
    """
    wf = _workflow(workflow_id)
    if isinstance(wf, JsonResponse):
        return wf
    body = _json_body(request)
    if isinstance(body, JsonResponse):
        return body
    unknown = sorted(set(body) - {"payload"})
    if unknown:
        return error(400, f"Unknown field(s) {', '.join(unknown)}; the body takes payload.")
    try:
        completed = engine.signal(wf.pk, name, body.get("payload"))
    except ValidationError as exc:
        return error(400, "; ".join(exc.messages))
    wf.refresh_from_db()
    return JsonResponse({**describe_workflow(wf), "completed": completed})
