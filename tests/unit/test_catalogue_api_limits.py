"""The JSON API's edges: bodies over the cap are a JSON 413, unknown paths a JSON 404, never HTML."""

import json
import logging

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from django_dyrygent.models import Workflow

pytestmark = pytest.mark.django_db

START = "/dyrygent/definitions/tests.add/start/"


@pytest.fixture
def starter():
    user = User.objects.create_user("api")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["start_workflow", "view_workflow"]))
    client = Client()
    client.force_login(user)
    return client


def padded(size):
    """A valid start body of exactly ``size`` bytes."""
    body = {"params": {"x": 1, "label": ""}}
    pad = size - len(json.dumps(body))
    body["params"]["label"] = "a" * pad
    raw = json.dumps(body)
    assert len(raw) == size
    return raw


def test_api_start__body_over_the_cap_is_413_json(starter):
    response = starter.post(START, data="x" * (64 * 1024 + 1), content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"].startswith(
        "Request body of 65537 bytes is over DYRYGENT_API_MAX_BODY_BYTES=65536"
    )
    assert not Workflow.objects.exists()


def test_api_start__body_over_django_upload_limit_is_413_json_without_a_traceback(starter, caplog):
    with caplog.at_level(logging.WARNING):
        response = starter.post(START, data="x" * (3 * 1024 * 1024), content_type="application/json")
    assert response.status_code == 413
    assert "DYRYGENT_API_MAX_BODY_BYTES" in response.json()["error"]
    assert not [r for r in caplog.records if "RequestDataTooBig" in r.getMessage() or r.exc_info]


def test_api_start__cap_is_the_setting(starter, settings):
    settings.DYRYGENT_API_MAX_BODY_BYTES = 200
    assert starter.post(START, data=padded(200), content_type="application/json").status_code == 201
    response = starter.post(START, data=padded(201), content_type="application/json")
    assert response.status_code == 413
    assert "DYRYGENT_API_MAX_BODY_BYTES=200" in response.json()["error"]
    assert Workflow.objects.count() == 1


def test_api_start__cap_over_django_limit_answers_413_naming_both(starter, settings):
    settings.DYRYGENT_API_MAX_BODY_BYTES = 10_000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = starter.post(START, data=padded(2000), content_type="application/json")
    assert response.status_code == 413
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in response.json()["error"]


@pytest.mark.parametrize("path", ["nope/", "definitions/tests.add/start/extra/", "workflows/a/b/c/"])
def test_api__unknown_path_is_404_json(starter, client, path):
    for who in (starter, client):
        response = who.get("/dyrygent/" + path)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"error": f"No API endpoint at /dyrygent/{path}."}


def test_api__path_without_its_trailing_slash_is_404_naming_the_right_one(starter):
    response = starter.post("/dyrygent/definitions/tests.add/start", data="{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json()["error"] == (
        "No API endpoint at /dyrygent/definitions/tests.add/start. "
        "Did you mean /dyrygent/definitions/tests.add/start/ (with the trailing slash)?"
    )
