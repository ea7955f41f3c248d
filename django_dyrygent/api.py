"""The JSON API: catalogue definitions and starts; workflows listed, read, canceled, retried, paused, resumed and
signalled; single nodes.

Mounted by the project (``path("dyrygent/", include("django_dyrygent.urls"))``);
``openapi.py`` describes every view here and is served beside them. A machine
authenticates with an ``ApiToken`` (``Authorization: Bearer <key>``), a browser
with whatever the project's middleware puts on ``request.user``. Answers are
JSON, errors included: 401 unauthenticated (saying how), 403 missing permission
or failed CSRF check, 404 unknown name, id or path, 405 wrong method, 400 bad
input (with the form's errors), 409 a conflicting idempotency key or an
impossible cancel/retry/pause/resume, 413 a body over
``DYRYGENT_API_MAX_BODY_BYTES`` (refused from its Content-Length, before it is read).

CSRF: a session cookie is sent by the browser on its own, so unsafe requests
made with a session are checked exactly as Django checks a form post
(``X-CSRFToken`` header with the ``csrftoken`` cookie's value), but a failure
is answered in JSON rather than with Django's HTML page. A token is never sent
by a browser on its own, so a request carrying one is not checked.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeAlias, cast

from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import NoReverseMatch, Resolver404, resolve, reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.csrf import csrf_exempt

from . import engine, launch, openapi
from .catalogue import START_PERMISSION, Definition, UnknownDefinition, registry
from .conf import settings
from .engine import nodes as node_actions
from .models import ApiToken, Workflow, WorkflowEdge, WorkflowNode
from .operations import families
from .serialization import unstorable
from .states import NodeKind, NodeState, Trigger, WorkflowState

P = ParamSpec("P")
#: A view of this API: ``view(request, *url_arguments)``.
ApiView: TypeAlias = Callable[Concatenate[HttpRequest, P], HttpResponse]

#: Request header carrying the client's idempotency key (``idempotency_key`` in the body works too).
IDEMPOTENCY_HEADER = "Idempotency-Key"


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


#: What a 401 says: how to authenticate.
AUTH_HELP = (
    "Authentication required: send an API token as 'Authorization: Bearer <token>' (API tokens are made "
    "in the admin, under API tokens), or call from a logged-in browser session with the X-CSRFToken header."
)


def unauthorized(message: str) -> JsonResponse:
    response = error(401, message)
    response["WWW-Authenticate"] = 'Bearer realm="django_dyrygent"'
    return response


def _authenticate_token(request: HttpRequest) -> JsonResponse | None:
    """Put the token's user on ``request``, or the 401 saying what is wrong with the header."""
    scheme, _, key = request.headers["Authorization"].partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return unauthorized("The Authorization header must be 'Bearer <token>'. " + AUTH_HELP)
    user = ApiToken.user_for(key.strip())
    if user is None:
        return unauthorized("Invalid or revoked API token (or its user is inactive).")
    request.user = user
    return None


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
            by_token = "Authorization" in request.headers
            if by_token:
                refused = _authenticate_token(request)
                if refused is not None:
                    return refused
            elif not request.user.is_authenticated:
                return unauthorized(AUTH_HELP)
            # Before the CSRF check, which may read a form-encoded body.
            size = _content_length(request)
            if size is None:  # Django's own reading of the body would raise ValueError: a 500 (found by fuzzing)
                return error(400, "The Content-Length header must be a whole number of bytes.")
            if size > settings.API_MAX_BODY_BYTES:
                return _too_big(size)
            # A token is sent on purpose, never by the browser on its own: no CSRF check for it.
            if not by_token and request.method not in ("GET", "HEAD", "OPTIONS"):
                try:
                    reason = _csrf_failure(request)
                except RequestDataTooBig:
                    return _too_big(None)
                except UnreadablePostError as exc:
                    return _unreadable(exc)
                except (MultiPartParserError, SuspiciousOperation, BadRequest) as exc:
                    return error(400, f"Request body cannot be read as its Content-Type "
                                      f"{request.content_type!r} says: {exc}")
                if reason:
                    return error(403, f"CSRF check failed: {reason}. Send the csrftoken cookie's value "
                                      "in the X-CSRFToken header.")
            if permission and not request.user.has_perm(permission):
                return error(403, f"Permission {permission} required.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def _content_length(request: HttpRequest) -> int | None:
    """The Content-Length header (0 when absent), or None when it is not a whole number of bytes."""
    try:
        size = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    return size if size >= 0 else None


def _csrf_failure(request: HttpRequest) -> str | None:
    """Why Django's CSRF check refuses ``request``, or None; raises what reading a form body raises.

    The body is read first: Django's check looks for the token in a form body,
    and parsing a multipart one from the stream would leave ``request.body``
    unreadable for the view. A body that is no form of its Content-Type
    raises (MultiPartParserError, TooManyFieldsSent...), which Django would
    answer with its HTML 400 page (found by fuzzing); the caller answers JSON.
    """
    request.body  # noqa: B018  (read into memory: the parsing below then works on a copy)
    return _CsrfCheck(_no_view).failure(request)


def _too_big(size: int | None) -> JsonResponse:
    """The 413 for a body of ``size`` bytes (None: over Django's own cap, size unknown)."""
    what = "Request body" if size is None else f"Request body of {size} bytes"
    return error(413, f"{what} is over DYRYGENT_API_MAX_BODY_BYTES={settings.API_MAX_BODY_BYTES} "
                      "(or Django's DATA_UPLOAD_MAX_MEMORY_SIZE, whichever is smaller).")


def _unreadable(exc: UnreadablePostError) -> JsonResponse:
    """The 400 for a body the connection did not deliver in full (Django raises; uncaught, a 500)."""
    return error(400, f"The request body could not be read in full: {exc}")


def _json_body(request: HttpRequest) -> dict[str, Any] | JsonResponse:
    """The request's JSON object ({} when empty), or a 400/413 response."""
    try:
        raw = request.body
    except RequestDataTooBig:  # Django's cap is the smaller one
        return _too_big(None)
    except UnreadablePostError as exc:  # the client stopped short of its Content-Length
        return _unreadable(exc)
    if len(raw) > settings.API_MAX_BODY_BYTES:  # a body sent without Content-Length
        return _too_big(len(raw))
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
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


def describe_workflow(wf: Workflow, related: dict[str, Any] | None = None) -> dict[str, Any]:
    """``related``: ``waiting_for`` and the family, from ``related_of`` (read for ``wf`` alone if None)."""
    if related is None:
        related = related_of([wf])[wf.pk]
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
        "nodes_upstream_failed": wf.nodes_upstream_failed,
        "created_at": _iso(wf.created_at),
        "started_at": _iso(wf.started_at),
        "finished_at": _iso(wf.finished_at),
        "paused_at": _iso(wf.paused_at),
        "deadline": _iso(wf.deadline),
        "error": wf.error,
        **related,
        "admin_url": admin_url,
    }


def related_of(workflows: Sequence[Workflow]) -> dict[Any, dict[str, Any]]:
    """What a workflow's description reads beyond its row, for a whole page in three queries."""
    live = [wf.pk for wf in workflows if wf.state in (Workflow.State.RUNNING, Workflow.State.PAUSED)]
    waiting: dict[Any, set[str]] = {pk: set() for pk in live}
    if live:
        rows = WorkflowNode.objects.filter(
            workflow_id__in=live, state=WorkflowNode.State.WAITING, kind=WorkflowNode.Kind.WAIT
        ).values_list("workflow_id", "task_name")
        for workflow_id, name in rows:
            waiting[workflow_id].add(name)
    family = families(workflows)
    # The signals it waits for now: what a client may send to /signal/<name>/.
    return {wf.pk: {"waiting_for": sorted(waiting.get(wf.pk, ()))[:100], **family[wf.pk]} for wf in workflows}


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


# -- lists ---------------------------------------------------------------------------------------------

#: Page sizes of the lists: (default, largest).
WORKFLOW_PAGE = (50, 500)
NODE_PAGE = (100, 1000)


class BadQuery(ValueError):
    """A query parameter that cannot be used as given (a 400 naming it)."""


def _int_param(request: HttpRequest, name: str, default: int, lowest: int, highest: int | None = None) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number, not {raw!r}.") from None
    if value < lowest or (highest is not None and value > highest):
        top = f" and at most {highest}" if highest is not None else ""
        raise BadQuery(f"{name} must be at least {lowest}{top}, not {value}.")
    return value


def _choices_param(request: HttpRequest, name: str, choices: Sequence[str]) -> list[str]:
    """A comma-separated list of allowed values ([] when absent)."""
    values = [v.strip() for v in request.GET.get(name, "").split(",") if v.strip()]
    wrong = [v for v in values if v not in choices]
    if wrong:
        raise BadQuery(f"{name}: unknown value(s) {', '.join(wrong)}; use {', '.join(choices)}.")
    return values


def _time_param(request: HttpRequest, name: str) -> datetime.datetime | None:
    raw = request.GET.get(name, "").strip()
    if not raw:
        return None
    try:
        value = parse_datetime(raw)
        if value is None:
            day = parse_date(raw)
            value = datetime.datetime.combine(day, datetime.time()) if day is not None else None
    except ValueError:
        value = None
    if value is not None:
        try:
            value = timezone.make_aware(value) if timezone.is_naive(value) else value
            # In UTC, as the query has it: a time UTC cannot hold (0001-01-01T00:00+05:00) is a 400, not a 500.
            return value.astimezone(datetime.timezone.utc)
        except (OverflowError, ValueError):
            pass
    raise BadQuery(f"{name} must be an ISO 8601 date or date-time (2026-11-27 or 2026-11-27T03:00:00Z), "
                   f"not {raw!r}.")


def _check_known(request: HttpRequest, known: Sequence[str]) -> None:
    unknown = sorted(set(request.GET) - set(known))
    if unknown:
        raise BadQuery(f"Unknown query parameter(s) {', '.join(unknown)}; this list takes {', '.join(known)}.")


def _page(request: HttpRequest, queryset: QuerySet[Any], sizes: tuple[int, int]) -> tuple[dict[str, Any], list[Any]]:
    """The paging part of a list answer (count, limit, offset, next, previous) and the page's rows."""
    limit = _int_param(request, "limit", sizes[0], 1, sizes[1])
    offset = _int_param(request, "offset", 0, 0)
    count = queryset.count()
    # Past the end the page is empty: asked of the database, an offset over its integers is a 500 (found by fuzzing).
    rows = list(queryset[offset:offset + limit]) if offset < count else []

    def link(at: int | None) -> str | None:
        if at is None:
            return None
        query = request.GET.copy()
        query["limit"], query["offset"] = str(limit), str(at)
        return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")

    return {
        "count": count, "limit": limit, "offset": offset,
        "next": link(offset + limit if offset + limit < count else None),
        "previous": link(max(offset - limit, 0) if offset > 0 else None),
    }, rows


WORKFLOW_FILTERS = ("definition", "state", "started_by", "trigger", "created_after", "created_before",
                    "limit", "offset")


@endpoint(["GET"], "django_dyrygent.view_workflow")
def workflows(request: HttpRequest) -> HttpResponse:
    """Workflows, newest first: filtered by definition, state(s), started_by, trigger and creation time; paged."""
    try:
        _check_known(request, WORKFLOW_FILTERS)
        queryset = Workflow.objects.defer("custom_payload", "options", "tasks_options").order_by("-created_at", "-id")
        for name in ("definition", "started_by"):
            if name in request.GET:
                # PostgreSQL refuses a NUL even in a lookup (a 500, found by fuzzing); no row can hold one anyway.
                problem = unstorable(request.GET[name], name)
                if problem:
                    raise BadQuery(f"{problem}, which no workflow has.")
                queryset = queryset.filter(**{name: request.GET[name]})
        states = _choices_param(request, "state", WorkflowState.values)
        if states:
            queryset = queryset.filter(state__in=states)
        triggers = _choices_param(request, "trigger", Trigger.values)
        if triggers:
            queryset = queryset.filter(trigger__in=triggers)
        after, before = _time_param(request, "created_after"), _time_param(request, "created_before")
        if after is not None:
            queryset = queryset.filter(created_at__gte=after)
        if before is not None:
            queryset = queryset.filter(created_at__lt=before)
        paging, rows = _page(request, queryset, WORKFLOW_PAGE)
    except BadQuery as exc:
        return error(400, str(exc))
    rows = list(rows)
    related = related_of(rows)
    return JsonResponse({**paging, "results": [describe_workflow(wf, related[wf.pk]) for wf in rows]})


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def describe_node(node: WorkflowNode, dependencies: list[int], key_wait: str = "") -> dict[str, Any]:
    """One node as the API shows it; ``key_wait``: why it waits for a slot of its key (``key_waits``)."""
    return {
        "id": node.pk,
        "task_id": node.task_id,
        "task_name": node.task_name,
        "kind": node.kind,
        "state": node.state,
        "trigger_rule": node.trigger_rule,
        "dependencies": dependencies,
        "result": node.result,
        "error": node.error,
        "reason": key_wait or node.reason,
        "concurrency_key": node.concurrency_key,
        "concurrency_limit": node.concurrency_limit,
        "attempts": node.attempts,
        "queued_at": _iso(node.queued_at),
        "started_at": _iso(node.started_at),
        "finished_at": _iso(node.finished_at),
        "duration_seconds": node.duration.total_seconds() if node.duration is not None else None,
        # Its task id is the id of the workflow it runs (once started; retry() starts another).
        "subworkflow": node.task_id if node.kind == NodeKind.SUBWORKFLOW else None,
    }


@endpoint(["GET"], "django_dyrygent.view_workflow")
def nodes(request: HttpRequest, workflow_id: str) -> HttpResponse:
    """A workflow's nodes in order, with their results and dependencies; filtered by state(s) and kind; paged."""
    wf = _workflow(workflow_id)
    if isinstance(wf, JsonResponse):
        return wf
    try:
        _check_known(request, ("state", "kind", "limit", "offset"))
        queryset = WorkflowNode.objects.filter(workflow_id=wf.pk).defer("signature", "custom_payload").order_by(
            "position", "id")
        states = _choices_param(request, "state", NodeState.values)
        if states:
            queryset = queryset.filter(state__in=states)
        kinds = _choices_param(request, "kind", NodeKind.values)
        if kinds:
            queryset = queryset.filter(kind__in=kinds)
        paging, rows = _page(request, queryset, NODE_PAGE)
    except BadQuery as exc:
        return error(400, str(exc))
    dependencies: dict[int, list[int]] = {node.pk: [] for node in rows}
    edges = WorkflowEdge.objects.filter(node_id__in=list(dependencies)).order_by("position", "id")
    for node_id, dependency_id in edges.values_list("node_id", "dependency_id"):
        dependencies[node_id].append(dependency_id)
    waits = WorkflowNode.objects.key_waits(rows)
    return JsonResponse({"workflow": str(wf.pk), **paging, "results": [
        describe_node(node, dependencies[node.pk], waits.get(node.pk, "")) for node in rows]})


# -- one node --------------------------------------------------------------------------------------------


def _is_id(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²``, which ``int()`` refuses (a 500, found by fuzzing)."""
    return text.isascii() and text.isdigit()


def _node(workflow_id: str, node_id: str) -> WorkflowNode | JsonResponse:
    """The workflow's node, or the 404 response."""
    wf = _workflow(workflow_id)
    if isinstance(wf, JsonResponse):
        return wf
    node = WorkflowNode.objects.filter(workflow_id=wf.pk, pk=int(node_id)).first() if _is_id(node_id) else None
    if node is None:
        return error(404, f"Workflow {wf.pk} has no node {node_id!r}.")
    return node


def _by(request: HttpRequest, verb: str) -> str:
    return f"{verb} by {request.user.get_username()} through the API"


#: An action on one node: ``act(request, node)`` returns the extra fields of the answer, or a response.
NodeAction: TypeAlias = Callable[[HttpRequest, WorkflowNode], "dict[str, Any] | HttpResponse"]


def node_action(permission: str) -> Callable[[NodeAction], ApiView[[str, str]]]:
    """A POST on ``workflows/<id>/nodes/<node id>/...``: the node found (404), a refusal answered 409.

    The answer is the node as it is after the action, with the fields ``act`` returns.
    """

    def decorator(act: NodeAction) -> ApiView[[str, str]]:
        @endpoint(["POST"], permission)
        @wraps(act)
        def view(request: HttpRequest, workflow_id: str, node_id: str) -> HttpResponse:
            node = _node(workflow_id, node_id)
            if isinstance(node, JsonResponse):
                return node
            try:
                answer = act(request, node)
            except ValidationError as exc:  # the engine's refusal: the node's state does not allow it
                return error(400 if exc.code == "result" else 409, " ".join(exc.messages))
            if isinstance(answer, HttpResponse):
                return answer
            node.refresh_from_db()
            dependencies = list(WorkflowEdge.objects.filter(node_id=node.pk).order_by("position", "id")
                                .values_list("dependency_id", flat=True))
            waits = WorkflowNode.objects.key_waits([node])
            return JsonResponse({**describe_node(node, dependencies, waits.get(node.pk, "")), **answer})

        return view

    return decorator


@node_action("django_dyrygent.retry_node")
def retry_node(request: HttpRequest, node: WorkflowNode) -> dict[str, Any] | HttpResponse:
    """Run a failed node again with the nodes after it that did not succeed (``engine.nodes.retry_node``)."""
    return {"nodes_reset": node_actions.retry_node(node.workflow_id, node.pk, reason=_by(request, "retried"))}


@node_action("django_dyrygent.mark_node")
def mark_node(request: HttpRequest, node: WorkflowNode) -> dict[str, Any] | HttpResponse:
    """Body ``{"state": "SUCCESS" | "SKIPPED", "result": ...}``: end the node without running it."""
    body = _json_body(request)
    if isinstance(body, JsonResponse):
        return body
    unknown = sorted(set(body) - {"state", "result"})
    if unknown:
        return error(400, f"Unknown field(s) {', '.join(unknown)}; the body takes state and result.")
    target = body.get("state")
    if target not in node_actions.MARKS:
        return error(400, f"state must be {' or '.join(node_actions.MARKS)}, not {target!r}.")
    if "result" in body and target != NodeState.SUCCESS:
        return error(400, "Only a node marked SUCCESS has a result.")
    released = node_actions.mark_node(node.workflow_id, node.pk, target, result=body.get("result"),
                                      reason=_by(request, f"marked {target.lower()}"))
    return {"nodes_released": released}


@node_action("django_dyrygent.cancel_node")
def cancel_node(request: HttpRequest, node: WorkflowNode) -> dict[str, Any] | HttpResponse:
    """Cancel one node that has not ended; 409 when it had."""
    if not node_actions.cancel_node(node.workflow_id, node.pk, reason=_by(request, "canceled")):
        node.refresh_from_db()
        return error(409, f"Node {node.task_id} already ended {node.state}; nothing to cancel.")
    return {}


@csrf_exempt  # it changes nothing; without this, Django's HTML 403 would answer a POST before the JSON 405
def openapi_document(request: HttpRequest) -> HttpResponse:
    """The OpenAPI document of this API (no authentication: it describes, it grants nothing)."""
    if request.method not in ("GET", "HEAD"):
        response = error(405, f"Method {request.method} not allowed; use GET.")
        response["Allow"] = "GET"
        return response
    base = request.build_absolute_uri(reverse("django_dyrygent:api-definitions")).removesuffix("definitions/")
    return JsonResponse(openapi.document(base.rstrip("/")))


@csrf_exempt
def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any other path under the API: a JSON 404, never the project's HTML page."""
    message = f"No API endpoint at {request.path}."
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path_info + "/")
        except Resolver404:
            pass
        else:
            if match.func is not not_found:
                message += f" Did you mean {request.path}/ (with the trailing slash)?"
    return error(404, message)


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
