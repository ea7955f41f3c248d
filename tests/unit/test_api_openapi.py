"""The OpenAPI document is served, and every answer of the API matches it: path, method, status and body.

Each call below goes through ``call()``, which validates the real response
against the schema the served document gives for it; the last test checks
that every documented operation was called with its success status.
"""

import json
import re
from datetime import timedelta
from urllib.parse import quote

import jsonschema
import pytest
from celery import chain
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.models import ApiToken, Workflow
from tests.tasks import Boom, fail, record

pytestmark = pytest.mark.django_db

API = "/dyrygent"
EXERCISED = set()  # (method, documented path, status) answered during this module
RAN = set()  # the tests of this module that ran in this session


@pytest.fixture(autouse=True)
def _record_ran(request):
    yield
    RAN.add(request.node.originalname)


@pytest.fixture
def document(client):
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture
def call(document):
    """``call(client, method, url, **kwargs)``: the response, after checking it against ``document``."""
    operations = []
    for template, methods in document["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$")
        operations.extend((pattern, template, method, operation) for method, operation in methods.items())

    def check(client, method, url, body=None, **headers):
        kwargs = {"headers": headers}
        if body is not None:
            kwargs.update(data=body if isinstance(body, str) else json.dumps(body), content_type="application/json")
        response = getattr(client, method)(API + url, **kwargs)
        path = url.split("?")[0]
        matches = [(t, op) for pattern, t, m, op in operations if m == method and pattern.match(path)]
        assert matches, f"{method.upper()} {path} is not in the OpenAPI document"
        template, operation = matches[0]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method.upper()} {template} answered {status}, undocumented"
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**schema, "components": document["components"]})
        EXERCISED.add((method, template, status))
        return response

    return check


def user_with(*codenames, username="api"):
    user = User.objects.create_user(username)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def machine():
    """A client that authenticates with an API token only (no session, no CSRF)."""
    _token, key = ApiToken.issue(user_with("start_workflow", "view_workflow", "change_workflow", "retry_node",
                                           "mark_node", "cancel_node", "signal_workflow"), "ci")
    return Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {key}")


def failed_workflow():
    wf = Workflow(name="failing")
    wf.add_celery_canvas(chain(fail.si("x"), record.si("after")))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_failed(wf.pk, wf.nodes.get(position=0).task_id, exception=Boom("x"))
    return wf


def test_openapi__document_is_served_and_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "http://testserver/dyrygent"}]
    jsonschema.Draft202012Validator.check_schema({"$defs": document["components"]["schemas"]})
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "A key from API tokens (admin).",
    }


def test_openapi__every_url_of_the_api_is_documented(document):
    from django_dyrygent import urls

    routes = {str(p.pattern) for p in urls.urlpatterns if p.name != "api-not-found"}
    documented = {re.sub(r"\{(\w+)\}", lambda m: f"<str:{m.group(1)}>", t).lstrip("/") for t in document["paths"]}
    assert routes == documented


def test_openapi__definitions_and_starts_match(machine, call):
    call(machine, "get", "/definitions/")
    call(machine, "get", "/definitions/tests.add/")
    call(machine, "get", "/definitions/tests.nope/")
    started = call(machine, "post", "/definitions/tests.add/start/", {"params": {"x": 1}, "idempotency_key": "k1"})
    assert started.status_code == 201
    assert call(machine, "post", "/definitions/tests.add/start/",
                {"params": {"x": 1}, "idempotency_key": "k1"}).status_code == 200
    assert call(machine, "post", "/definitions/tests.add/start/",
                {"params": {"x": 2}, "idempotency_key": "k1"}).status_code == 409
    assert call(machine, "post", "/definitions/tests.add/start/", {"params": {"x": "one"}}).status_code == 400
    assert call(machine, "post", "/definitions/tests.add/start/", "x" * 70000).status_code == 413
    assert call(machine, "post", "/definitions/tests.secret/start/", {"params": {}}).status_code == 403


def test_openapi__workflow_reads_lists_and_actions_match(machine, call):
    wf = failed_workflow()
    Workflow.objects.create(name="other", definition="tests.add", state="RUNNING")
    page = call(machine, "get", "/workflows/?state=FAILURE,RUNNING&limit=1").json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]
    assert call(machine, "get", "/workflows/?state=NOPE").status_code == 400
    assert call(machine, "get", f"/workflows/{wf.pk}/").json()["state"] == "FAILURE"
    assert call(machine, "get", "/workflows/00000000-0000-0000-0000-000000000000/").status_code == 404
    nodes = call(machine, "get", f"/workflows/{wf.pk}/nodes/").json()
    assert [n["state"] for n in nodes["results"]] == ["FAILURE", "UPSTREAM_FAILED"]
    assert call(machine, "get", f"/workflows/{wf.pk}/nodes/?kind=nope").status_code == 400
    assert call(machine, "get", "/workflows/00000000-0000-0000-0000-000000000000/nodes/").status_code == 404
    assert call(machine, "post", f"/workflows/{wf.pk}/retry/").json()["nodes_reset"] == 2
    assert call(machine, "post", f"/workflows/{wf.pk}/retry/").status_code == 409
    assert call(machine, "post", f"/workflows/{wf.pk}/cancel/").json()["state"] == "CANCELED"
    assert call(machine, "post", f"/workflows/{wf.pk}/cancel/").status_code == 409
    assert call(machine, "post", "/workflows/00000000-0000-0000-0000-000000000000/cancel/").status_code == 404
    assert call(machine, "post", "/workflows/00000000-0000-0000-0000-000000000000/retry/").status_code == 404


def test_openapi__workflow_list_filters_by_definition_state_started_by_and_time_and_pages(machine, call):
    now = timezone.now()

    def made(name, hours_ago, **fields):
        wf = Workflow.objects.create(name=name, **fields)
        Workflow.objects.filter(pk=wf.pk).update(created_at=now - timedelta(hours=hours_ago))
        return str(wf.pk)

    nightly = made("nightly", 30, definition="tests.add", started_by="alice", state="SUCCESS")
    recent = made("recent", 1, definition="tests.add", started_by="bob", state="FAILURE")
    other = made("other", 2, definition="tests.other", started_by="alice", state="RUNNING")

    def ids(query):
        return [run["id"] for run in call(machine, "get", f"/workflows/?{query}").json()["results"]]

    assert ids("") == [recent, other, nightly]  # newest first
    assert ids("definition=tests.add") == [recent, nightly]
    assert ids("started_by=alice") == [other, nightly]
    assert ids("state=SUCCESS,FAILURE&started_by=bob") == [recent]
    three_hours_ago = quote((now - timedelta(hours=3)).isoformat())
    assert ids(f"created_after={three_hours_ago}") == [recent, other]
    assert ids(f"created_before={three_hours_ago}") == [nightly]
    first = call(machine, "get", "/workflows/?limit=2").json()
    assert (first["count"], [r["id"] for r in first["results"]], first["previous"]) == (3, [recent, other], None)
    second = call(machine, "get", first["next"].split(API, 1)[1]).json()
    assert [r["id"] for r in second["results"]] == [nightly] and second["next"] is None


def test_openapi__a_run_s_nodes_carry_their_results(machine, call):
    wf = Workflow(name="results")
    wf.add_celery_canvas(chain(record.si("a"), record.si("b")))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_succeeded(wf.pk, wf.nodes.get(position=0).task_id, {"rows": 42})
    nodes = call(machine, "get", f"/workflows/{wf.pk}/nodes/").json()["results"]
    assert [(n["state"], n["result"]) for n in nodes] == [("SUCCESS", {"rows": 42}), ("QUEUED", None)]


def test_openapi__node_actions_match(machine, call):
    wf = failed_workflow()
    failing, after = wf.nodes.get(position=0), wf.nodes.get(position=1)
    nodes = f"/workflows/{wf.pk}/nodes"
    refused = call(machine, "post", f"{nodes}/{after.pk}/retry/").json()["error"]
    assert refused == f"Node {after.task_id} did not run because {failing.task_id} is FAILURE; retry that node."
    assert call(machine, "post", f"{nodes}/{failing.pk}/mark/", {"state": "FAILURE"}).status_code == 400
    assert call(machine, "post", f"{nodes}/{failing.pk}/mark/", {"state": "SKIPPED", "result": 1}).status_code == 400
    marked = call(machine, "post", f"{nodes}/{failing.pk}/mark/", {"state": "SUCCESS", "result": {"rows": 3}}).json()
    assert (marked["state"], marked["result"], marked["nodes_released"]) == ("SUCCESS", {"rows": 3}, 1)
    assert call(machine, "post", f"{nodes}/{failing.pk}/mark/", {"state": "SKIPPED"}).status_code == 409
    assert call(machine, "post", f"{nodes}/{after.pk}/cancel/").json()["state"] == "CANCELED"
    assert call(machine, "post", f"{nodes}/{after.pk}/cancel/").status_code == 409
    retried = call(machine, "post", f"{nodes}/{after.pk}/retry/").json()
    assert (retried["state"], retried["nodes_reset"]) == ("QUEUED", 1)
    for action in ("retry", "mark", "cancel"):
        assert call(machine, "post", f"{nodes}/999999/{action}/", {"state": "SUCCESS"}).status_code == 404
    assert call(machine, "post", "/workflows/00000000-0000-0000-0000-000000000000/nodes/1/cancel/").status_code == 404


def test_openapi__pause_resume_and_signal_match(machine, call):
    wf = Workflow(name="approval")
    first = wf.add_signature(record.si("build"))
    wf.add_wait("approved", dependencies=[first])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    url = f"/workflows/{wf.pk}"
    assert call(machine, "post", f"{url}/resume/").status_code == 409
    paused = call(machine, "post", f"{url}/pause/").json()
    assert paused["state"] == "PAUSED" and paused["paused_at"]
    assert call(machine, "post", f"{url}/pause/").status_code == 409
    assert call(machine, "post", f"{url}/resume/").json()["state"] == "RUNNING"
    assert call(machine, "post", f"{url}/signal/approved/", {"payload": {"ok": True}}).json()["completed"] == 0
    outcomes.node_succeeded(wf.pk, first.task_id, "built")
    assert call(machine, "get", f"{url}/").json()["waiting_for"] == ["approved"]
    assert call(machine, "post", f"{url}/signal/approved/", {"nope": 1}).status_code == 400
    signalled = call(machine, "post", f"{url}/signal/approved/", {"payload": {"ok": True}}).json()
    assert (signalled["completed"], signalled["state"]) == (1, "SUCCESS")
    for action in ("pause/", "resume/", "signal/approved/"):
        assert call(machine, "post", f"/workflows/00000000-0000-0000-0000-000000000000/{action}").status_code == 404


def test_openapi__refusals_match(call, client):
    assert call(client, "get", "/workflows/").status_code == 401
    assert call(client, "get", "/definitions/").status_code == 401
    assert call(client, "get", "/workflows/00000000-0000-0000-0000-000000000000/").status_code == 401
    assert call(client, "get", "/definitions/tests.add/", Authorization="Bearer nope").status_code == 401
    _token, key = ApiToken.issue(user_with(username="nobody"), "no permissions")
    weak = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    for method, url in [("get", "/definitions/"), ("get", "/definitions/tests.add/"), ("get", "/workflows/"),
                        ("get", "/workflows/00000000-0000-0000-0000-000000000000/"),
                        ("get", "/workflows/00000000-0000-0000-0000-000000000000/nodes/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/cancel/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/retry/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/pause/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/resume/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/signal/go/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/nodes/1/retry/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/nodes/1/mark/"),
                        ("post", "/workflows/00000000-0000-0000-0000-000000000000/nodes/1/cancel/")]:
        assert call(weak, method, url).status_code == 403
    call(client, "get", "/openapi.json")


def test_openapi__a_node_waiting_for_a_concurrency_key_says_why(machine, call):
    flows = []
    for name in ("holder", "waiter"):
        wf = Workflow(name=name)
        wf.add_signature(record.si(name), concurrency_key="customer-42", concurrency_limit=1)
        wf.apply_async()
        engine.tick(wf.pk, scheduled=False)
        flows.append(wf)
    (waiting,) = call(machine, "get", f"/workflows/{flows[1].pk}/nodes/").json()["results"]
    assert [waiting[f] for f in ("state", "concurrency_key", "concurrency_limit")] == ["WAITING", "customer-42", 1]
    assert waiting["reason"] == "waiting for concurrency key customer-42: 1 of 1 running"
    (running,) = call(machine, "get", f"/workflows/{flows[0].pk}/nodes/").json()["results"]
    assert (running["state"], running["reason"]) == ("QUEUED", "")


def test_openapi__every_operation_was_called_with_its_success_status(document, request):
    """Runs last in this module: the tests above called each operation (``EXERCISED``)."""
    me = request.node.originalname
    scenarios = {name for name in globals() if name.startswith("test_") and name != me}
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    assert not (scenarios & selected) - RAN, f"{me} must be the module's last test"
    if scenarios - RAN:
        pytest.skip(f"needs the module's other tests to run first: {sorted(scenarios - RAN)}")
    wanted = {
        (method, template, status)
        for template, methods in document["paths"].items() for method, operation in methods.items()
        for status in operation["responses"] if status.startswith("2")
    }
    assert wanted - EXERCISED == set()
