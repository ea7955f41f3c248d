"""API tokens: per user, hashed at rest, revocable, managed in the admin, sent as Authorization: Bearer."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from django_dyrygent import catalogue
from django_dyrygent.models import ApiToken, Workflow
from tests.tasks import record

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
START = "/dyrygent/definitions/tests.add/start/"


def user_with(*codenames, username="api", **fields):
    user = User.objects.create_user(username, **fields)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def bearer(key):
    return Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {key}")


def test_api_token__only_its_hash_is_stored():
    token, key = ApiToken.issue(user_with("view_workflow"), "ci")
    assert key.startswith("dyr_") and len(key) > 40
    row = ApiToken.objects.filter(pk=token.pk).values().get()
    assert key not in {str(v) for v in row.values()}
    assert row["key_hash"] == ApiToken.hash_key(key) and key.startswith(row["prefix"])


def test_api_token__authenticates_post_without_csrf_and_records_last_use():
    token, key = ApiToken.issue(user_with("start_workflow"), "ci")
    response = bearer(key).post(START, data='{"params": {"x": 1}}', content_type="application/json")
    assert response.status_code == 201, response.content
    assert Workflow.objects.get().started_by == "api"
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_api_token__carries_its_user_s_permissions_only():
    _token, key = ApiToken.issue(user_with("view_workflow"), "reader")
    response = bearer(key).post(START, data='{"params": {"x": 1}}', content_type="application/json")
    assert response.status_code == 403 and "django_dyrygent.start_workflow" in response.json()["error"]


@pytest.mark.parametrize("header, message", [
    ("Bearer dyr_wrong", "Invalid or revoked API token (or its user is inactive)."),
    ("Token abc", "The Authorization header must be 'Bearer <token>'."),
    ("Bearer ", "The Authorization header must be 'Bearer <token>'."),
])
def test_api_token__a_bad_header_is_401_saying_what_is_wrong(header, message):
    response = Client(HTTP_AUTHORIZATION=header).get("/dyrygent/definitions/")
    assert response.status_code == 401 and response.json()["error"].startswith(message)
    assert response["WWW-Authenticate"] == 'Bearer realm="django_dyrygent"'


def test_api__anonymous_401_says_how_to_authenticate(client):
    response = client.get("/dyrygent/workflows/")
    assert response.status_code == 401
    assert "'Authorization: Bearer <token>'" in response.json()["error"]
    assert "API tokens" in response.json()["error"] and "X-CSRFToken" in response.json()["error"]
    assert response["WWW-Authenticate"] == 'Bearer realm="django_dyrygent"'


def test_api_token__revoked_or_inactive_user_is_refused():
    user = user_with("view_workflow")
    token, key = ApiToken.issue(user, "ci")
    assert bearer(key).get("/dyrygent/workflows/").status_code == 200
    user.is_active = False
    user.save()
    assert bearer(key).get("/dyrygent/workflows/").status_code == 401
    user.is_active = True
    user.save()
    admin_client = Client()
    admin_client.force_login(User.objects.create_superuser("root"))
    admin_client.post(reverse("admin:django_dyrygent_apitoken_changelist"),
                      {"action": "revoke_tokens", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert bearer(key).get("/dyrygent/workflows/").status_code == 401


def test_admin_add_token__shows_the_key_once_and_it_works():
    root = User.objects.create_superuser("root")
    client = Client()
    client.force_login(root)
    owner = user_with("view_workflow", username="robot")
    response = client.post(reverse("admin:django_dyrygent_apitoken_add"), {"user": owner.pk, "name": "nightly"},
                           follow=True)
    page = response.content.decode()
    key = re.search(r"<code>(dyr_[\w-]+)</code>", page).group(1)
    assert "never shown again" in page
    assert bearer(key).get("/dyrygent/workflows/").status_code == 200
    token = ApiToken.objects.get()
    detail = client.get(reverse("admin:django_dyrygent_apitoken_change", args=[token.pk])).content.decode()
    assert key not in detail and token.prefix in detail


def test_admin_add_token__staff_make_tokens_for_themselves_only():
    staff = user_with("add_apitoken", "view_apitoken", username="staff", is_staff=True)
    other = user_with(username="other")
    client = Client()
    client.force_login(staff)
    response = client.post(reverse("admin:django_dyrygent_apitoken_add"), {"user": other.pk, "name": "theirs"})
    assert response.status_code == 200 and not ApiToken.objects.exists()  # the form refuses that user
    client.post(reverse("admin:django_dyrygent_apitoken_add"), {"user": staff.pk, "name": "mine"})
    assert list(ApiToken.objects.values_list("user__username", flat=True)) == ["staff"]


@pytest.mark.django_db(transaction=True)
def test_docs_curl__works_from_a_clean_shell(live_server):
    """The curl lines of docs/catalogue.md, run by a shell with an empty environment but the token."""
    page = (ROOT / "docs" / "catalogue.md").read_text()
    lines = [line[2:] for line in page.splitlines() if line.startswith("$ curl") and "Bearer $DYRYGENT_TOKEN" in line]
    assert len(lines) == 2, lines

    # The example project's definition of that name, when a test loaded it, steps aside meanwhile.
    example = catalogue.registry._definitions.pop("nightly-audit", None)

    @catalogue.register("nightly-audit")
    def nightly_audit(channel: str = "ops"):
        return record.si(channel)

    try:
        _token, key = ApiToken.issue(user_with("start_workflow", "view_workflow"), "docs")
        answers = []
        for line in lines:
            command = line.replace("http://localhost:8000", live_server.url)
            done = subprocess.run(["/bin/sh", "-c", command], env={"PATH": os.defpath, "DYRYGENT_TOKEN": key},
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            answers.append(done.stdout)
        assert '"definition": "nightly-audit"' in answers[0] and '"replayed": false' in answers[0]
        assert answers[1].startswith('{"count": 0, "limit": 10, "offset": 0, "next": null')
    finally:
        catalogue.registry.unregister("nightly-audit")
        if example is not None:
            catalogue.registry.register(example)
