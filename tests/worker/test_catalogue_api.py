"""The JSON API (django_dyrygent.urls): every answer, error paths first. Nothing here ever answers 500."""

import json
import threading

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from django_dyrygent import engine, launch
from django_dyrygent.models import Workflow

pytestmark = pytest.mark.django_db

API = "/dyrygent/"


def user_with(*codenames, username="api"):
    user = User.objects.create_user(username)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def client_for(*codenames, csrf=False, username="api"):
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user_with(*codenames, username=username))
    return client


@pytest.fixture
def starter():
    return client_for("start_workflow")


def post(client, url, body=None, raw=None, **headers):
    data = raw if raw is not None else json.dumps(body if body is not None else {})
    return client.post(url, data=data, content_type="application/json", headers=headers)


def start_url(name):
    return f"{API}definitions/{name}/start/"


# -- authentication, permission, method, CSRF ---------------------------------------------------


@pytest.mark.parametrize("method, url", [
    ("get", "definitions/"), ("get", "definitions/tests.add/"), ("post", "definitions/tests.add/start/"),
    ("get", "workflows/00000000-0000-0000-0000-000000000000/"),
    ("post", "workflows/00000000-0000-0000-0000-000000000000/cancel/"),
])
def test_api__anonymous_is_401_in_json(client, method, url):
    response = getattr(client, method)(API + url)
    assert response.status_code == 401
    assert response.json()["error"].startswith("Authentication required: send an API token")


@pytest.mark.parametrize("method, url, perm", [
    ("get", "definitions/", "django_dyrygent.start_workflow"),
    ("post", "definitions/tests.add/start/", "django_dyrygent.start_workflow"),
    ("get", "workflows/00000000-0000-0000-0000-000000000000/", "django_dyrygent.view_workflow"),
    ("post", "workflows/00000000-0000-0000-0000-000000000000/cancel/", "django_dyrygent.change_workflow"),
    ("post", "workflows/00000000-0000-0000-0000-000000000000/retry/", "django_dyrygent.change_workflow"),
])
def test_api__missing_permission_is_403_naming_it(method, url, perm):
    client = client_for()
    response = getattr(client, method)(API + url)
    assert response.status_code == 403 and response.json()["error"] == f"Permission {perm} required."
    assert not Workflow.objects.exists()


def test_api__definition_permission_is_checked_too(starter):
    response = post(starter, start_url("tests.secret"), {"params": {"x": 1}})
    assert response.status_code == 403
    assert response.json()["error"] == "Permission tests.view_execution required to start tests.secret."
    assert starter.get(f"{API}definitions/tests.secret/").status_code == 403
    names = [d["name"] for d in starter.get(f"{API}definitions/").json()["definitions"]]
    assert "tests.add" in names and "tests.secret" not in names
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("method, url", [("get", "definitions/tests.add/start/"), ("post", "definitions/")])
def test_api__wrong_method_is_405_with_allow(starter, method, url):
    response = getattr(starter, method)(API + url)
    assert response.status_code == 405 and "not allowed" in response.json()["error"]
    assert response["Allow"] in ("GET", "POST")


def test_api__session_post_without_csrf_token_is_403_in_json():
    client = client_for("start_workflow", csrf=True)
    response = post(client, start_url("tests.add"), {"params": {"x": 1}})
    assert response.status_code == 403
    assert response.json()["error"].startswith("CSRF check failed: CSRF cookie not set.")
    assert not Workflow.objects.exists()


def test_api__session_post_with_csrf_token_starts():
    client = client_for("start_workflow", csrf=True)
    client.get(f"{API}definitions/")  # any page; the cookie comes from get_token below
    from django.middleware.csrf import _get_new_csrf_string

    token = _get_new_csrf_string()
    client.cookies["csrftoken"] = token
    response = post(client, start_url("tests.add"), {"params": {"x": 1}}, X_CSRFToken=token)
    assert response.status_code == 201, response.content


# -- bad input: 400 with the form's errors, 404 unknown ----------------------------------------------


@pytest.mark.parametrize("body, raw, status, expected", [
    ({"params": {}}, None, 400, {"x": ["This field is required."]}),
    ({"params": {"x": "four"}}, None, 400, {"x": ["Enter a whole number."]}),
    ({"params": {"x": 1, "zz": 2}}, None, 400,
     {"__all__": ["Unknown parameter(s) zz; tests.add takes: x, y, label."]}),
    (None, "{oops", 400, "Request body is not valid JSON"),
    (None, "[1, 2]", 400, "Request body must be a JSON object, not list."),
    ({"params": [1]}, None, 400, "parameters must be an object (a dict), not list"),
    ({"parms": {"x": 1}}, None, 400, "Unknown field(s) parms; the body takes params and idempotency_key."),
    ({"params": {"x": 1}, "idempotency_key": ""}, None, 400, "idempotency key must be a non-empty string"),
    ({"params": {"x": 1}, "idempotency_key": 7}, None, 400, "idempotency key must be a non-empty string"),
])
def test_api_start__bad_input_is_400_and_saves_nothing(starter, body, raw, status, expected):
    response = post(starter, start_url("tests.add"), body, raw=raw)
    assert response.status_code == status
    data = response.json()
    if isinstance(expected, dict):
        assert data["errors"] == expected
        assert data["error"].startswith("Invalid parameters for workflow definition 'tests.add'")
    else:
        assert expected in data["error"]
    assert not Workflow.objects.exists()


def test_api_start__form_clean_and_factory_refusal_are_400(starter):
    response = post(starter, start_url("tests.report"), {"params": {"day": "2026-11-27", "hosts": 5,
                                                                    "mode": "full"}})
    assert response.status_code == 400
    assert response.json()["errors"] == {"__all__": ["A full report covers at most 3 hosts."]}
    response = post(starter, start_url("tests.report"), {"params": {"day": "2026-11-27", "hosts": 4}})
    assert response.status_code == 400
    assert response.json()["errors"] == {"__all__": ["4 hosts is unlucky: the factory refuses it."]}
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("method, url, message", [
    ("post", "definitions/tests.nope/start/", "No workflow definition named 'tests.nope'."),
    ("get", "definitions/tests.nope/", "No workflow definition named 'tests.nope'."),
    ("get", "workflows/00000000-0000-0000-0000-000000000000/", "No workflow with id"),
    ("get", "workflows/not-a-uuid/", "No workflow with id 'not-a-uuid'."),
    ("post", "workflows/not-a-uuid/cancel/", "No workflow with id"),
    ("post", "workflows/00000000-0000-0000-0000-000000000000/retry/", "No workflow with id"),
])
def test_api__unknown_name_or_id_is_404(method, url, message):
    client = client_for("start_workflow", "view_workflow", "change_workflow")
    response = getattr(client, method)(API + url)
    assert response.status_code == 404 and message in response.json()["error"]
    assert not Workflow.objects.exists()


# -- the happy paths ---------------------------------------------------------------------------------


def test_api_definitions__lists_names_descriptions_and_parameters(starter):
    response = starter.get(f"{API}definitions/")
    assert response.status_code == 200
    by_name = {d["name"]: d for d in response.json()["definitions"]}
    assert by_name["tests.add"]["title"] == "Add two numbers, then multiply by ten."
    assert by_name["tests.hold-skip"]["overlap"] == "skip"
    assert [p["name"] for p in by_name["tests.report"]["parameters"]] == ["day", "hosts", "mode"]
    detail = starter.get(f"{API}definitions/tests.report/").json()
    assert detail["parameters"][1] == {"name": "hosts", "type": "integer", "required": False,
                                       "label": "Hosts", "help_text": "", "default": 2}


def test_api_start__201_with_the_workflow_and_its_provenance(starter):
    response = post(starter, start_url("tests.add"), {"params": {"x": 5, "label": "five"}})
    assert response.status_code == 201
    data = response.json()
    wf = Workflow.objects.get()
    assert data["id"] == str(wf.pk) and data["replayed"] is False
    assert (data["definition"], data["trigger"], data["started_by"], data["name"]) == (
        "tests.add", "api", "api", "five")
    assert data["parameters"] == {"x": 5, "y": 2, "label": "five"}
    assert data["admin_url"] == f"/admin/django_dyrygent/workflow/{wf.pk}/change/"


@pytest.mark.parametrize("where", ["header", "body"])
def test_api_start__idempotency_key_replays_the_first_workflow(starter, where):
    def send():
        if where == "header":
            return post(starter, start_url("tests.add"), {"params": {"x": 1}}, Idempotency_Key="abc")
        return post(starter, start_url("tests.add"), {"params": {"x": 1}, "idempotency_key": "abc"})

    first, again = send(), send()
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["replayed"] is True
    assert Workflow.objects.count() == 1


def test_api_start__idempotency_key_reused_with_other_params_is_409(starter):
    post(starter, start_url("tests.add"), {"params": {"x": 1}}, Idempotency_Key="abc")
    response = post(starter, start_url("tests.add"), {"params": {"x": 2}}, Idempotency_Key="abc")
    assert response.status_code == 409 and "already used for another request" in response.json()["error"]
    assert Workflow.objects.count() == 1


def test_api_status_cancel_retry__answers_and_conflicts():
    client = client_for("start_workflow", "view_workflow", "change_workflow")
    wf = launch.start("tests.add", {"x": 1}).workflow
    url = f"{API}workflows/{wf.pk}/"

    assert client.get(url).json()["state"] == "INITIAL"
    retried = client.post(url + "retry/")
    assert retried.status_code == 409 and "no failed or canceled node to retry" in retried.json()["error"]
    canceled = client.post(url + "cancel/")
    assert canceled.status_code == 200 and canceled.json()["state"] == "CANCELED"
    again = client.post(url + "cancel/")
    assert again.status_code == 409 and again.json()["error"].endswith("already ended CANCELED; nothing to cancel.")
    retried = client.post(url + "retry/")
    assert retried.status_code == 200 and retried.json()["nodes_reset"] == 2
    assert retried.json()["state"] == "RUNNING"
    engine.cancel(wf.pk)


@pytest.mark.worker
def test_api_start__racing_requests_with_one_key_make_one_workflow(worker):
    """Threads with their own connections post the same key at once: one row, every answer names it.

    Committed rows: the suite's worker runs the workflow, and the test waits
    for its end, so no tick of it is left to run during the table flush.
    """
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers: no race to provoke (covered by the unit test of the fallback)")
    user_with("start_workflow", username="racer")
    barrier = threading.Barrier(4)
    answers = []

    def racer():
        try:
            client = Client()
            client.force_login(User.objects.get(username="racer"))
            barrier.wait(timeout=10)
            answers.append(post(client, start_url("tests.add"), {"params": {"x": 3}}, Idempotency_Key="race"))
        finally:
            connection.close()

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 4
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert Workflow.objects.filter(idempotency_key="race").count() == 1
    assert Workflow.objects.get().wait(timeout=30) == Workflow.State.SUCCESS
