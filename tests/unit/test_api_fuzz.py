"""The JSON API under property-based fuzzing, driven by its own OpenAPI document.

For every documented operation (and wrong methods, and paths the document does
not have), hypothesis draws path parameters (ids of existing workflows and
nodes, other UUIDs, arbitrary text), query strings, headers and bodies (valid
for the operation's schema, arbitrary JSON, non-JSON bytes, wrong content
types, lying Content-Lengths); half the requests are well formed instead, so
that they reach the engine and change runs. Each goes as one of five identities:
anonymous (sometimes with a broken Authorization header), a token user with
every permission, a token user who may only view, a session with every
permission that never sends a CSRF token, and a session with the CSRF token
whose user may only view. Every answer must be JSON and not a 500, and:

- the Workflow rows grow only on a 201 of the start endpoint, by one;
- an answer that is not 2xx leaves every workflow and node as it was;
- an identity that may not change workflows (or that failed the CSRF check)
  leaves every workflow and node as it was, whatever it was answered.

``DYRYGENT_FUZZ_EXAMPLES`` (default 40 per operation) runs it longer; examples
are derandomized so CI replays the same requests on every run.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import jsonschema
import pytest
from celery import chain
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import resolve
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django_dyrygent import engine, openapi
from django_dyrygent.catalogue import registry
from django_dyrygent.engine import outcomes
from django_dyrygent.models import ApiToken, Workflow, WorkflowNode
from tests.tasks import Boom, fail, record

pytestmark = pytest.mark.django_db

API = "/dyrygent"
EXAMPLES = int(os.environ.get("DYRYGENT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
DOCUMENT = openapi.document("http://testserver" + API)
OPERATIONS = [(method, template) for template, methods in DOCUMENT["paths"].items() for method in methods]
ALL_PERMISSIONS = ("start_workflow", "view_workflow", "change_workflow", "retry_node", "mark_node",
                   "cancel_node", "signal_workflow", "view_execution")
IDENTITIES = ("anonymous", "full", "viewer", "session-no-csrf", "session-viewer")
#: Identities whose requests must never change a workflow or a node.
POWERLESS = {"anonymous", "viewer", "session-no-csrf", "session-viewer"}
CSRF_TOKEN = "a" * 32

# -- strategies ------------------------------------------------------------------------------------------

#: JSON values of every kind, nested a little.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
#: Text for a path segment or a query value: printable, unicode, control characters, separators.
TEXT = st.text(max_size=40) | st.sampled_from(["", " ", "..", ".", "%", "%00", "\x00", "/", "?", "#", "-1", "0",
                                                "1e9", "99999999999999999999", "null", "true", "[]", "{}"])


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values (mostly) valid for a JSON schema of the document: enough of the keywords it uses."""
    if "$ref" in schema:
        return from_schema(DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of(*(from_schema({**schema, "type": k}) for k in kind))
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in schema["properties"].items() if k in required},
            optional={k: from_schema(v) for k, v in schema["properties"].items() if k not in required},
        )
    simple = {"object": st.dictionaries(st.text(max_size=8), JSON, max_size=3), "string": st.text(max_size=20),
              "integer": st.integers(), "number": st.floats(allow_nan=False), "boolean": st.booleans(),
              "null": st.none(), "array": st.lists(JSON, max_size=3)}
    return simple.get(kind, JSON) if isinstance(kind, str) else JSON


def body_strategy(operation: dict[str, Any]) -> st.SearchStrategy[tuple[bytes | None, str | None]]:
    """(raw body, content type): per the operation's schema, any JSON, or not JSON at all."""
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    as_json = (from_schema(schema) if schema else JSON) | JSON
    content_types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data", "multipart/form-data; boundary=x", "", "*/*"])
    return st.one_of(
        st.just((None, None)),
        st.tuples(as_json.map(lambda v: json.dumps(v).encode()), st.just("application/json")),
        st.tuples(as_json.map(lambda v: json.dumps(v).encode()), content_types),
        st.tuples(st.binary(max_size=64), content_types),
        st.tuples(st.sampled_from([b"{", b"\xff\xfe", b"[1,2]", b'"x"', b"a=1&b=2", b"--x\r\n\r\n", b"   "]),
                  content_types),
        st.tuples(st.sampled_from([b'{"params": {"x": "' + b"9" * 70000 + b'"}}', b"x" * 65537]),
                  content_types),
    )


def query_strategy(operation: dict[str, Any]) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Query pairs: documented parameters with plausible and wrong values, unknown names, repeats."""
    names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    plausible = st.sampled_from(["1", "0", "-1", "500", "501", "2026-11-27", "2026-11-27T03:00:00Z",
                                 "2026-13-45", "RUNNING", "FAILURE,SUCCESS", "task", "api", ",", "9" * 30])
    value = plausible | TEXT
    name = (st.sampled_from(names) if names else st.nothing()) | st.sampled_from(["nope", "format", ""]) | TEXT
    return st.lists(st.tuples(name, value), max_size=4)


def header_strategy(operation: dict[str, Any]) -> st.SearchStrategy[dict[str, str]]:
    extra = st.fixed_dictionaries({}, optional={
        "HTTP_IDEMPOTENCY_KEY": TEXT,
        # Not one longer than the body: Django's test client asserts rather than give a short read (a
        # server gives the view an UnreadablePostError: test_api_fuzz__a_body_cut_short_is_a_400).
        "CONTENT_LENGTH": st.sampled_from(["-1", "abc", "", "99999999", "0"]),
        "HTTP_ACCEPT": st.sampled_from(["text/html", "*/*", "application/xml"]),
        "HTTP_X_CSRFTOKEN": st.sampled_from(["", "nope", "b" * 32]),
    })
    return extra


# -- the world the requests land in ----------------------------------------------------------------------


def user_with(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _failed() -> Workflow:
    wf = Workflow(name="failing", started_by="owner")
    wf.add_celery_canvas(chain(fail.si("x"), record.si("after")))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_failed(wf.pk, wf.nodes.get(position=0).task_id, exception=Boom("x"))
    return wf


def _waiting(paused: bool = False) -> Workflow:
    wf = Workflow(name="approval", started_by="owner")
    first = wf.add_signature(record.si("build"))
    wf.add_wait("approved", dependencies=[first])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_succeeded(wf.pk, first.task_id, "built")
    if paused:
        engine.pause(wf.pk, reason="fixture")
    return wf


@pytest.fixture
def world():
    """Another user's runs in every interesting state, and the clients of the five identities."""
    runs = [_failed(), _waiting(), _waiting(paused=True), Workflow.objects.create(name="done", state="SUCCESS")]
    full = user_with("full", *ALL_PERMISSIONS)
    viewer = user_with("viewer", "view_workflow")
    _token, full_key = ApiToken.issue(full, "fuzz")
    _token, viewer_key = ApiToken.issue(viewer, "fuzz")
    session_full = Client(enforce_csrf_checks=True)
    session_full.force_login(full)
    session_viewer = Client(enforce_csrf_checks=True)
    session_viewer.force_login(viewer)
    session_viewer.cookies["csrftoken"] = CSRF_TOKEN
    return {
        "workflows": [str(wf.pk) for wf in runs],
        "nodes": list(WorkflowNode.objects.values_list("pk", flat=True)),
        "clients": {
            "anonymous": Client(enforce_csrf_checks=True),
            "full": Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {full_key}"),
            "viewer": Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {viewer_key}"),
            "session-no-csrf": session_full,
            "session-viewer": session_viewer,
        },
    }


def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What a request must not change when it is refused: every workflow's and node's state and marks."""
    return (
        list(Workflow.objects.order_by("pk").values_list("pk", "state", "paused_at", "finished_at", "error")),
        list(WorkflowNode.objects.order_by("pk").values_list("pk", "state", "attempts", "result", "reason")),
    )


def path_value(draw: st.DrawFn, name: str, world: dict[str, Any]) -> str:
    if name == "workflow_id":
        value = draw(st.sampled_from(world["workflows"]) | st.uuids().map(str) | TEXT)
    elif name == "node_id":
        value = draw(st.sampled_from(world["nodes"]).map(str) | st.integers().map(str) | TEXT)
    elif name == "name":
        value = draw(st.sampled_from([*(d.name for d in registry), "approved", "tests.secret"]) | TEXT)
    else:
        value = draw(TEXT)
    return urllib.parse.quote(value, safe="")


def send(client: Client, method: str, url: str, body: bytes | None, content_type: str | None,
         headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = dict(headers)
    if method == "HEAD" or method == "GET":
        return client.generic(method, url, **kwargs)
    return client.generic(method, url, data=body or b"", content_type=content_type or "", **kwargs)


def check(identity: str, method: str, template: str, response: Any, before: Any, counted: int) -> None:
    assert response.status_code != 500, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), (response.status_code, response.content[:300])
    if method != "HEAD":
        answer = json.loads(response.content)
        if _routed_to(template, method, response):
            # The document tells the truth: this status is documented for the operation, with this body.
            documented = DOCUMENT["paths"][template][method.lower()]["responses"]
            assert str(response.status_code) in documented, f"{method} {template}: {response.status_code} undocumented"
            schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
            jsonschema.validate(answer, {**schema, "components": DOCUMENT["components"]})
    ok = 200 <= response.status_code < 300
    grown = Workflow.objects.count() - counted
    if template == "/definitions/{name}/start/" and method == "POST" and response.status_code == 201:
        assert grown == 1
    else:
        assert grown == 0, f"{grown} workflow(s) started by {method} {template} answered {response.status_code}"
    if not ok or identity in POWERLESS or method in ("GET", "HEAD", "OPTIONS"):
        assert snapshot() == before, f"{identity} {method} {template} answered {response.status_code} changed runs"


def _routed_to(template: str, method: str, response: Any) -> bool:
    """Whether the request reached ``template``'s view with its documented method (a drawn id may hold a "/")."""
    if not template or method.lower() not in DOCUMENT["paths"][template]:
        return False
    match = resolve(response.request["PATH_INFO"])
    return match.route == (API + template).lstrip("/").replace("{", "<str:").replace("}", ">")


@pytest.mark.parametrize(("method", "template"), OPERATIONS, ids=[f"{m} {t}" for m, t in OPERATIONS])
@FUZZ
@given(data=st.data())
def test_api_fuzz__documented_operations(world, method, template, data):
    operation = DOCUMENT["paths"][template][method]
    identity = data.draw(st.sampled_from(IDENTITIES), label="identity")
    # Half the requests are well formed (existing ids, the documented method, a body of the schema), so that
    # they reach the engine and change runs; the other half is anything.
    if data.draw(st.booleans(), label="well formed"):
        url, verb, body, content_type, headers = _well_formed(data, operation, template, world)
    else:
        url = API + "".join(
            path_value(data.draw, part[1:-1], world) if part.startswith("{") else part
            for part in _split(template)
        )
        query = data.draw(query_strategy(operation), label="query")
        if query:
            url += "?" + urllib.parse.urlencode(query)
        verb = data.draw(st.sampled_from([method.upper()]) | st.sampled_from(
            ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]), label="method")
        body, content_type = data.draw(body_strategy(operation), label="body")
        headers = data.draw(header_strategy(operation), label="headers")
    if identity == "anonymous":
        auth = data.draw(st.none() | st.sampled_from(["Bearer", "Bearer ", "Basic abc", "Bearer nope", "bearer  x"])
                         | TEXT.map(lambda t: f"Bearer {t}"), label="authorization")
        if auth is not None:
            headers["HTTP_AUTHORIZATION"] = auth
    elif identity == "session-viewer":
        headers.setdefault("HTTP_X_CSRFTOKEN", CSRF_TOKEN)
    before, counted = snapshot(), Workflow.objects.count()
    response = send(world["clients"][identity], verb, url, body, content_type, headers)
    event(f"{identity} {response.status_code}")  # what was reached: --hypothesis-show-statistics
    event(f"held to the document: {_routed_to(template, verb, response)}")
    check(identity, verb, template, response, before, counted)


def _well_formed(data: Any, operation: dict[str, Any], template: str,
                 world: dict[str, Any]) -> tuple[str, str, bytes | None, str | None, dict[str, str]]:
    """A request as a client that read the document would send it: (url, method, body, content type, headers)."""
    workflow_id = data.draw(st.sampled_from(world["workflows"]), label="workflow")
    node_ids = list(WorkflowNode.objects.filter(workflow_id=workflow_id).values_list("pk", flat=True))
    values = {
        "workflow_id": workflow_id,
        "node_id": str(data.draw(st.sampled_from(node_ids or world["nodes"]), label="node")),
        "name": "approved" if "signal" in template else data.draw(st.sampled_from(["tests.add", "tests.secret"])),
    }
    url = API + "".join(values[part[1:-1]] if part.startswith("{") else part for part in _split(template))
    if template.endswith("/start/"):
        value = data.draw(st.fixed_dictionaries({"params": st.fixed_dictionaries({"x": st.integers(-9, 9)})},
                                                optional={"idempotency_key": st.sampled_from(["k1", "k2"])}))
    else:
        schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        value = data.draw(from_schema(schema)) if schema else None
    body = None if value is None else json.dumps(value).encode()
    return url, _method_of(operation, template), body, "application/json", {}


def _method_of(operation: dict[str, Any], template: str) -> str:
    return next(m for m, op in DOCUMENT["paths"][template].items() if op is operation).upper()


def _split(template: str) -> list[str]:
    """``/a/{b}/c/`` -> ``["/a/", "{b}", "/c/"]``."""
    parts, rest = [], template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        name, _, rest = tail.partition("}")
        parts += [head, "{" + name + "}"]
    return [*parts, rest]


@FUZZ
@given(data=st.data())
def test_api_fuzz__paths_the_document_does_not_have(world, data):
    """Anything else under the API answers JSON too (404 or 405), and changes nothing."""
    identity = data.draw(st.sampled_from(IDENTITIES))
    segments = data.draw(st.lists(st.sampled_from(["workflows", "nodes", "definitions", "openapi.json", "x", ""])
                                  | TEXT.map(lambda t: urllib.parse.quote(t, safe="")), max_size=6))
    url = API + "/" + "/".join(segments) + data.draw(st.sampled_from(["", "/"]))
    verb = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]))
    before, counted = snapshot(), Workflow.objects.count()
    response = send(world["clients"][identity], verb, url, b"{}", "application/json", {})
    check(identity, verb, "", response, before, counted)


def test_api_fuzz__covers_every_documented_operation():
    """The document is the fuzzer's source: every route of urls.py is one of its operations."""
    from django_dyrygent import urls

    routes = {str(p.pattern) for p in urls.urlpatterns if p.name != "api-not-found"}
    assert len({t for _m, t in OPERATIONS}) == len(routes)



def test_api_fuzz__no_powerless_identity_changes_another_user_s_runs(world):
    """Every action on every run and node, as each identity that may not act: refused, and nothing changes.

    The fuzzing above draws these too; this sweeps all of them on every run, whatever the draws.
    """
    bodies = {"mark/": {"state": "SUCCESS", "result": 1}, "signal/approved/": {"payload": 1}}
    urls = [f"{API}/workflows/{wf}/{action}" for wf in world["workflows"]
            for action in ("cancel/", "retry/", "pause/", "resume/", "signal/approved/")]
    urls += [f"{API}/workflows/{node.workflow_id}/nodes/{node.pk}/{action}"
             for node in WorkflowNode.objects.all() for action in ("retry/", "mark/", "cancel/")]
    urls.append(f"{API}/definitions/tests.add/start/")
    before, counted = snapshot(), Workflow.objects.count()
    for identity in sorted(POWERLESS):
        headers = {"HTTP_X_CSRFTOKEN": CSRF_TOKEN} if identity == "session-viewer" else {}
        for url in urls:
            body = next((b for tail, b in bodies.items() if url.endswith(tail)), {"params": {"x": 1}})
            response = world["clients"][identity].post(url, body, content_type="application/json", **headers)
            assert response.status_code in (401, 403), (identity, url, response.status_code)
            check(identity, "POST", "", response, before, counted)


# -- what the fuzzing found --------------------------------------------------------------------------------


def test_api_fuzz__openapi_json_refuses_other_methods_in_json_not_with_the_csrf_html_page():
    """Found by fuzzing: a POST to openapi.json met Django's CSRF middleware first, answered by its HTML 403."""
    response = Client(enforce_csrf_checks=True).post(f"{API}/openapi.json", "{}", content_type="application/json")
    assert (response.status_code, response["Content-Type"], response["Allow"]) == (405, "application/json", "GET")


@pytest.fixture
def full_client():
    _token, key = ApiToken.issue(user_with("full", *ALL_PERMISSIONS), "regression")
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def test_api_fuzz__an_offset_past_every_integer_is_an_empty_page(full_client):
    """Found by fuzzing: an offset over the database's integers reached the query and failed with a 500."""
    wf = _failed()
    for url in (f"{API}/workflows/?offset={'9' * 30}", f"{API}/workflows/{wf.pk}/nodes/?offset={2 ** 63}"):
        page = full_client.get(url).json()
        assert (page["count"] > 0, page["results"], page["next"]) == (True, [], None)
        assert page["previous"]


@pytest.mark.parametrize("when", ["0001-01-01T00:00+05:00", "9999-12-31T23:59-05:00"])
def test_api_fuzz__a_time_utc_cannot_hold_is_a_400(full_client, when):
    """Found by fuzzing: a valid ISO time whose UTC is before year 1 or after 9999 failed in the query (500)."""
    response = full_client.get(f"{API}/workflows/", {"created_after": when})
    assert response.status_code == 400 and "created_after must be an ISO 8601" in response.json()["error"]


def test_api_fuzz__a_node_id_of_unicode_digits_is_a_404(full_client):
    """Found by fuzzing: ``"²".isdigit()`` is true but ``int("²")`` raises, so the node actions answered 500."""
    wf = _failed()
    response = full_client.post(f"{API}/workflows/{wf.pk}/nodes/%C2%B2/cancel/")
    assert response.status_code == 404 and response.json()["error"] == f"Workflow {wf.pk} has no node '²'."


@pytest.mark.parametrize("name", ["definition", "started_by"])
def test_api_fuzz__a_nul_in_a_text_filter_is_a_400(full_client, name):
    """Found by fuzzing on PostgreSQL: a NUL reached the lookup, which PostgreSQL refuses (a 500)."""
    response = full_client.get(f"{API}/workflows/", {name: "a\x00b"})
    assert response.status_code == 400
    assert response.json()["error"] == f"{name} contains a NUL character (\\x00), which no workflow has."


@pytest.mark.parametrize("where", ["body", "header"])
def test_api_fuzz__an_idempotency_key_no_column_can_hold_starts_nothing(full_client, where):
    """Found by fuzzing on PostgreSQL: a key with a NUL failed in the replay lookup (a 500)."""
    body: dict[str, Any] = {"params": {"x": 1}}
    headers = {"Idempotency-Key": "a\x00b"} if where == "header" else {}
    if where == "body":
        body["idempotency_key"] = "a\x00b"
    response = full_client.post(f"{API}/definitions/tests.add/start/", body, content_type="application/json",
                                headers=headers)
    assert response.status_code == 400 and "NUL character" in response.json()["error"]
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("result", ["a\x00b", {"k": ["\ud800"]}])
def test_api_fuzz__a_marked_result_no_column_can_hold_is_a_400_and_changes_nothing(full_client, result):
    """Found by fuzzing on PostgreSQL: mark stored a NUL or a lone surrogate in jsonb, which refuses it (a 500).

    The marked result now follows the rules of a task's own result (``outcomes.encode_result``).
    """
    wf = _failed()
    node = wf.nodes.get(position=0)
    before = snapshot()
    response = full_client.post(f"{API}/workflows/{wf.pk}/nodes/{node.pk}/mark/",
                                json.dumps({"state": "SUCCESS", "result": result}), content_type="application/json")
    assert response.status_code == 400 and "database columns cannot hold" in response.json()["error"]
    assert snapshot() == before


@pytest.fixture
def session_client():
    """A logged-in browser session with every permission and a valid CSRF cookie and header."""
    client = Client(enforce_csrf_checks=True, HTTP_X_CSRFTOKEN=CSRF_TOKEN)
    client.force_login(user_with("browser", *ALL_PERMISSIONS))
    client.cookies["csrftoken"] = CSRF_TOKEN
    return client


@pytest.mark.parametrize("identity", ["token", "session"])
@pytest.mark.parametrize("length", ["abc", "-1"])
def test_api_fuzz__a_content_length_that_is_no_size_is_a_400(full_client, session_client, identity, length):
    """Found by fuzzing: Django's reading of the body raised ValueError on Content-Length: abc (a 500)."""
    client = full_client if identity == "token" else session_client
    wf = _waiting()
    response = client.post(f"{API}/workflows/{wf.pk}/pause/", b"{}", content_type="application/json",
                           CONTENT_LENGTH=length)
    assert response.status_code == 400 and "Content-Length" in response.json()["error"]
    assert Workflow.objects.get(pk=wf.pk).state == "RUNNING"


@pytest.mark.parametrize(("body", "content_type"), [
    (b"\x00", "multipart/form-data"),  # no boundary: MultiPartParserError
    (b"a=1&" * 2000, "application/x-www-form-urlencoded"),  # over DATA_UPLOAD_MAX_NUMBER_FIELDS
])
def test_api_fuzz__a_session_body_that_is_no_form_of_its_type_is_a_json_400(session_client, body, content_type):
    """Found by fuzzing: the CSRF check parses a form body to look for the token; Django's HTML 400 answered."""
    wf = _waiting()
    response = session_client.post(f"{API}/workflows/{wf.pk}/pause/", body, content_type=content_type)
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert "Request body cannot be read as its Content-Type" in response.json()["error"]
    assert Workflow.objects.get(pk=wf.pk).state == "RUNNING"


def test_api_fuzz__a_session_multipart_body_leaves_the_body_readable_for_the_view(session_client):
    """The CSRF check's form parsing reads a copy of the body, so the view still answers in JSON (400)."""
    wf = _waiting()
    response = session_client.post(f"{API}/workflows/{wf.pk}/signal/approved/", {"payload": "x"})  # multipart
    assert response.status_code == 400 and response.json()["error"].startswith("Request body is not valid JSON")


def test_api_fuzz__a_path_with_a_newline_is_a_json_404():
    """Found by fuzzing: the catch-all's "." does not match a newline, so %0A reached the project's HTML 404."""
    response = Client().get(f"{API}/workflows%0A/")
    assert response.status_code == 404 and response.json()["error"] == f"No API endpoint at {API}/workflows\n/."


class _CutShort:
    """A ``wsgi.input`` whose client went away mid-body."""

    def read(self, size: int = -1) -> bytes:
        raise OSError("connection reset by peer")

    readline = read


@pytest.mark.parametrize("identity", ["token", "session"])
def test_api_fuzz__a_body_cut_short_is_a_400(full_client, session_client, identity):
    """Found by fuzzing (a Content-Length over the body): the short read raised UnreadablePostError, a 500."""
    client = full_client if identity == "token" else session_client
    wf = _waiting()
    response = client.post(f"{API}/workflows/{wf.pk}/signal/approved/", b"", content_type="application/json",
                           CONTENT_LENGTH="20", **{"wsgi.input": _CutShort()})
    assert response.status_code == 400
    assert response.json()["error"] == "The request body could not be read in full: connection reset by peer"
    assert wf.nodes.get(kind="wait").state == "WAITING"


def test_api_fuzz__every_operation_documents_the_400_and_413_the_shared_checks_answer(full_client):
    """Found by fuzzing against the document: GET /workflows/ with a huge Content-Length answered an undocumented 413.

    The checks every view shares (Content-Length, the session's body) answer 400 and 413 before any view runs.
    """
    for template, methods in DOCUMENT["paths"].items():
        for method, operation in methods.items():
            if template != "/openapi.json":
                assert {"400", "413"} <= set(operation["responses"]), f"{method} {template}"
    response = full_client.get(f"{API}/workflows/", CONTENT_LENGTH="99999999")
    assert response.status_code == 413 and "413" in DOCUMENT["paths"]["/workflows/"]["get"]["responses"]
