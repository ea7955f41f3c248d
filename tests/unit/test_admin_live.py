"""The admin tells the truth: live fields and events, buttons that can act, honest bars, cut JSON."""

import json

import pytest
from django.urls import reverse

from django_dyrygent import engine
from django_dyrygent.admin import display
from django_dyrygent.admin.workflows import WorkflowAdmin
from django_dyrygent.engine import outcomes
from django_dyrygent.graph import layout as graph
from django_dyrygent.models import Workflow, WorkflowEvent, WorkflowNode
from tests.tasks import record
from tests.unit.conftest import NODE_CHANGELIST, change_url, failed_workflow, make_workflow, status_url

pytestmark = pytest.mark.django_db


def node_url(node):
    return reverse("admin:django_dyrygent_workflownode_change", args=[node.pk])


def readonly_contents(page, name):
    """What Django's change form shows in the read-only box of field ``name``."""
    part = page.split(f"field-{name}", 1)[1]
    return part.split('<div class="readonly">', 1)[1].split("</div>", 1)[0]


# -- live fields and events ------------------------------------------------------------------------


def test_status_json__sends_every_changing_field_as_the_page_shows_it(admin_client):
    wf = make_workflow("live")
    engine.tick(wf.pk, scheduled=False)
    first = wf.nodes.get(position=0)
    outcomes.node_failed(wf.pk, first.task_id, exception=ValueError("disk <full>"))
    page = admin_client.get(change_url(wf)).content.decode()
    data = admin_client.get(status_url(wf)).json()
    assert set(data["fields"]) == set(WorkflowAdmin.live_fields)
    for name in WorkflowAdmin.live_fields:
        assert data["fields"][name] == readonly_contents(page, name).strip(), name
    assert data["fields"]["nodes_failed"] == "4"  # a, then the rest upstream of it
    assert data["fields"]["finished_at"] != "-"  # the workflow ended FAILURE


def test_status_json__fields_follow_the_workflow_after_the_page_loaded(admin_client):
    wf = make_workflow("moving")
    before = admin_client.get(status_url(wf)).json()
    assert before["fields"]["ticks"] == "0" and before["fields"]["nodes_done"] == "0"
    engine.tick(wf.pk, scheduled=False)
    first = wf.nodes.get(position=0)
    outcomes.node_succeeded(wf.pk, first.task_id, 1)
    after = admin_client.get(status_url(wf)).json()
    assert after["fields"]["ticks"] == "1" and after["fields"]["nodes_done"] == "1"
    assert after["fields"]["started_at"] != before["fields"]["started_at"]
    assert "1 / 4 done" in after["progress"]
    events = WorkflowEvent.objects.filter(workflow=wf).count()
    assert events > before["events"].count("<tr>") - 1
    assert after["events"].count("<tr>") == 1 + events  # the header row, then one row per event
    assert f"Latest {events} events" in after["events"]


def test_status_json__events_are_the_page_event_list(admin_client):
    wf = make_workflow("events")
    engine.tick(wf.pk, scheduled=False)
    page = admin_client.get(change_url(wf)).content.decode()
    events = admin_client.get(status_url(wf)).json()["events"]
    assert events.strip() in page


def test_events__name_joins_readably_and_siblings_with_their_arguments(admin_client):
    wf = make_workflow("named", width=2)
    engine.tick(wf.pk, scheduled=False)
    first = wf.nodes.get(position=0)
    outcomes.node_succeeded(wf.pk, first.task_id, 1)
    for node in wf.nodes.filter(signature__args__in=[["b0"], ["b1"]]):
        outcomes.node_succeeded(wf.pk, node.task_id, 1)
    join = wf.nodes.get(kind="join")
    events = admin_client.get(status_url(wf)).json()["events"]
    assert f">join #{join.position}</a>" in events
    assert f">{join.task_id}</a>" not in events
    assert ">record(&#x27;b0&#x27;)</a>" in events and ">record(&#x27;b1&#x27;)</a>" in events
    assert 'title="tests.record(&#x27;b0&#x27;) (' in events


# -- buttons ---------------------------------------------------------------------------------------------


def forms_of(page):
    """{action name: hidden?} of the change page's action forms."""
    found = {}
    for chunk in page.split('<form method="post" action="')[1:]:
        tag = chunk.split(">", 1)[0]
        if 'data-action="' in tag:
            name = tag.split('data-action="', 1)[1].split('"', 1)[0]
            found[name] = " hidden" in tag
    return found


def test_buttons__cancel_and_tick_for_a_running_workflow_retry_only_after_a_failure(admin_client):
    wf = make_workflow("buttons")
    engine.tick(wf.pk, scheduled=False)
    page = admin_client.get(change_url(wf)).content.decode()
    assert forms_of(page) == {"cancel_workflows": False, "retry_workflows": True, "tick_workflows": False,
                              "pause_workflows": False, "resume_workflows": True}
    assert admin_client.get(status_url(wf)).json()["actions"] == {
        "cancel_workflows": True, "retry_workflows": False, "tick_workflows": True,
        "pause_workflows": True, "resume_workflows": False, "run_again": False,
    }
    wf.pause()  # a paused workflow's tick does nothing: no button
    assert admin_client.get(status_url(wf)).json()["actions"] == {
        "cancel_workflows": True, "retry_workflows": False, "tick_workflows": False,
        "pause_workflows": False, "resume_workflows": True, "run_again": False,
    }
    failed = failed_workflow()
    page = admin_client.get(change_url(failed)).content.decode()
    assert forms_of(page) == {"cancel_workflows": True, "retry_workflows": False, "tick_workflows": True,
                              "pause_workflows": True, "resume_workflows": True}
    assert admin_client.get(status_url(failed)).json()["actions"] == {
        "cancel_workflows": False, "retry_workflows": True, "tick_workflows": False,
        "pause_workflows": False, "resume_workflows": False, "run_again": True,
    }


def test_buttons__nothing_to_do_for_a_successful_workflow(admin_client):
    wf = Workflow(name="done")
    wf.add_signature(record.si("a"))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_succeeded(wf.pk, wf.nodes.get().task_id, 1)
    page = admin_client.get(change_url(wf)).content.decode()
    assert set(forms_of(page).values()) == {True}


def test_cancel_button__asks_for_confirmation(admin_client):
    wf = make_workflow("confirm")
    page = admin_client.get(change_url(wf)).content.decode()
    tag = page.split('data-action="cancel_workflows"', 1)[1].split(">", 1)[0]
    assert 'data-confirm="Cancel this workflow? Running tasks are revoked' in tag
    retry_tag = page.split('data-action="retry_workflows"', 1)[1].split(">", 1)[0]
    assert "data-confirm" not in retry_tag


# -- progress bars ---------------------------------------------------------------------------------------


def test_progress_parts__failure_is_red_not_green_and_empty_is_remaining():
    assert display.progress_parts(16, 0, 0, 0) == {"ok": 0, "failed": 0, "other": 0, "rest": 100}
    assert display.progress_parts(10, 4, 6, 10) == {"ok": 40, "failed": 60, "other": 0, "rest": 0}
    assert display.progress_parts(4, 1, 1, 3) == {"ok": 25, "failed": 25, "other": 25, "rest": 25}
    assert display.progress_parts(0, 0, 0, 0)["rest"] == 100


def test_progress_parts__one_failure_in_ten_thousand_still_shows():
    parts = display.progress_parts(10_000, 9_999, 1, 10_000)
    assert parts["failed"] > 0 and parts["ok"] + parts["failed"] <= 100.8


def page_bar(admin_client, wf):
    page = admin_client.get(change_url(wf)).content.decode()
    return page.split('<svg class="dy-progress" id="dy-progress"', 1)[1].split("</svg>", 1)[0]


def test_progress__failed_workflow_is_red_not_green(admin_client):
    bar = page_bar(admin_client, failed_workflow())
    assert '<rect class="dy-part-ok" x="0" y="0" width="0"' in bar
    assert '<rect class="dy-part-failed" x="0" y="0" width="100"' in bar  # a, then the rest upstream


def test_progress__running_workflow_shows_succeeded_failed_and_remaining(admin_client):
    wf = make_workflow("parts")
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_succeeded(wf.pk, wf.nodes.get(position=0).task_id, 1)
    outcomes.node_failed(wf.pk, wf.nodes.get(signature__args=["b0"]).task_id, exception=ValueError("x"))
    bar = page_bar(admin_client, wf)
    assert '<rect class="dy-part-ok" x="0" y="0" width="25"' in bar  # a
    assert '<rect class="dy-part-failed" x="25" y="0" width="50"' in bar  # b0, and add upstream of it
    assert '<rect class="dy-part-rest" x="75" y="0" width="25"' in bar  # b1 still queued
    assert "<title>3 / 4 done, 1 failed, 1 upstream failed</title>" in bar


# -- large JSON ----------------------------------------------------------------------------------------------


def test_large_payload__cut_on_the_page_with_a_link_to_the_whole_value(admin_client):
    payload = {"blob": "x" * 200_000}
    wf = make_workflow("big", custom_payload=payload)
    page = admin_client.get(change_url(wf)).content.decode()
    assert len(page) < 60_000
    full_url = reverse("admin:django_dyrygent_workflow_json", args=[wf.pk, "custom_payload"])
    assert f'<a href="{full_url}">Full value</a>' in page
    assert "Showing the first 3,000 of 200," in page
    whole = admin_client.get(full_url)
    assert whole.status_code == 200 and whole["Content-Type"] == "application/json"
    assert json.loads(whole.content) == payload


def test_large_result_and_arguments__cut_on_the_node_page(admin_client):
    wf = make_workflow("big node")
    node = wf.nodes.get(position=0)
    WorkflowNode.objects.filter(pk=node.pk).update(
        result=list(range(5000)), signature={**node.signature, "args": ["y" * 50_000]},
    )
    page = admin_client.get(node_url(node)).content.decode()
    assert len(page) < 60_000
    for name in ("result", "arguments"):
        url = reverse("admin:django_dyrygent_workflownode_json", args=[node.pk, name])
        assert f'<a href="{url}">Full value</a>' in page
    whole = admin_client.get(reverse("admin:django_dyrygent_workflownode_json", args=[node.pk, "arguments"]))
    assert json.loads(whole.content) == {"args": ["y" * 50_000], "kwargs": {}}


def test_json_view__unknown_name_404_and_needs_view_permission(admin_client, client):
    wf = make_workflow("perm")
    assert admin_client.get(
        reverse("admin:django_dyrygent_workflow_json", args=[wf.pk, "secret"])
    ).status_code == 404
    url = reverse("admin:django_dyrygent_workflow_json", args=[wf.pk, "custom_payload"])
    response = client.get(url)
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_small_json__shown_whole_without_a_link(admin_client):
    wf = make_workflow("small", custom_payload={"user": 7})
    page = admin_client.get(change_url(wf)).content.decode()
    assert "Full value" not in page and "&quot;user&quot;: 7" in page


# -- tooltip and node list --------------------------------------------------------------------------------------


def test_tooltip__failed_node_shows_the_exception_line_not_the_traceback_header(admin_client):
    wf = make_workflow("tb")
    engine.tick(wf.pk, scheduled=False)
    first = wf.nodes.get(position=0)
    traceback = "Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n    g()\n' * 40
    outcomes.node_failed(wf.pk, first.task_id, traceback=traceback + "ValueError: disk full\n")
    svg = admin_client.get(reverse("admin:django_dyrygent_workflow_dag", args=[wf.pk])).content.decode()
    title = svg.split(f'id="dy-n{first.pk}"', 1)[1].split("</title>", 1)[0]
    assert "error: ValueError: disk full" in title
    assert "Traceback (most recent call last)" not in title


@pytest.mark.parametrize("error, line", [
    ("ValueError: boom", "ValueError: boom"),
    ("Timed out: no outcome 5s after the task started", "Timed out: no outcome 5s after the task started"),
    ("Traceback (most recent call last):\n  File ...\nKeyError: 'x'\n", "KeyError: 'x'"),
    ("", ""),
])
def test_error_line__exception_line_of_a_traceback_else_the_first_line(error, line):
    assert graph.error_line(error, error) == line


def test_node_list__short_task_ids_and_times_on_one_line(admin_client):
    wf = make_workflow("listed nodes")
    engine.tick(wf.pk, scheduled=False)
    first = wf.nodes.get(position=0)
    page = admin_client.get(NODE_CHANGELIST, {"workflow": wf.pk}).content.decode()
    assert f'<code class="dy-nowrap" title="{first.task_id}">{first.task_id[:8]}</code>' in page
    assert f">{first.task_id}<" not in page
    assert "record(&#x27;a&#x27;)" in page
    join = wf.nodes.get(kind="join")
    assert f">join #{join.position}</span>" in page


def test_lists__do_not_read_large_json_columns(admin_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.unit.conftest import CHANGELIST

    make_workflow("deferred", custom_payload={"blob": "x" * 1000})
    for url, column in ((CHANGELIST, "custom_payload"), (NODE_CHANGELIST, "result")):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(url).status_code == 200
        listing = [q["sql"] for q in queries if "LIMIT" in q["sql"] and "COUNT" not in q["sql"]]
        assert listing and not any(column in sql for sql in listing), listing
