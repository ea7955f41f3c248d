"""The admin: read-only pages, engine-driven actions, the DAG, permissions and escaping."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_dyrygent import engine
from django_dyrygent.admin.workflows import WorkflowAdmin
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow, WorkflowNode
from tests.tasks import record
from tests.unit.conftest import CHANGELIST, NODE_CHANGELIST, change_url, failed_workflow, make_workflow, status_url

pytestmark = pytest.mark.django_db

XSS = '<script>alert("xss")</script>'


def act_url(wf, action):
    return reverse("admin:django_dyrygent_workflow_act", args=[wf.pk, action])


def staff(*perms):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="django_dyrygent", codename__in=perms,
    ))
    client = Client()
    client.force_login(user)
    return client


def staff_client_without_view():
    client = Client()
    client.force_login(User.objects.get(username="staff"))
    return client


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


# -- list ----------------------------------------------------------------------------------------


def test_changelist__state_badge_progress_and_counters(admin_client):
    wf = make_workflow("listed")
    assert wf.nodes_total == 4
    Workflow.objects.filter(pk=wf.pk).update(nodes_done=2, nodes_succeeded=1, nodes_failed=1, state="RUNNING")
    content = admin_client.get(CHANGELIST).content.decode()
    assert "listed" in content and str(wf.pk)[:8] in content
    assert '<span class="dy-badge dy-s-RUNNING">Running</span>' in content
    # Succeeded, failed, skipped and remaining parts, each in its own colour (dag.css).
    assert ('<rect class="dy-part-ok" x="0" y="0" width="25" height="10"/>'
            '<rect class="dy-part-failed" x="25" y="0" width="25" height="10"/>'
            '<rect class="dy-part-other" x="50" y="0" width="0" height="10"/>'
            '<rect class="dy-part-rest" x="50" y="0" width="50" height="10"/>') in content
    assert '<span class="dy-count">2 / 4 done, 1 failed</span>' in content


def test_changelist__queries_do_not_grow_with_rows(admin_client):
    make_workflow("one")
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(CHANGELIST).status_code == 200
    for i in range(15):
        make_workflow(f"more{i}")
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(CHANGELIST).status_code == 200
    assert 0 < len(few) == len(many)


def test_changelist__search_by_short_id_name_and_node_task_id(admin_client):
    first, second = make_workflow("alpha"), make_workflow("beta")
    task_id = second.nodes.get(position=0).task_id

    def found(q):
        content = admin_client.get(CHANGELIST, {"q": q}).content.decode()
        return {wf.name for wf in (first, second) if str(wf.pk)[:8] in content}

    assert found(str(first.pk)[:8]) == {"alpha"}
    assert found("bet") == {"beta"}
    assert found(task_id) == {"beta"}


def test_changelist__filters_by_state(admin_client):
    make_workflow("initial")
    failed_workflow()
    content = admin_client.get(CHANGELIST, {"state__exact": "FAILURE"}).content.decode()
    assert "failing" in content and ">initial<" not in content


# -- actions ---------------------------------------------------------------------------------------


def test_cancel_workflows__cancels_through_engine_and_reports(admin_client):
    wf = make_workflow()
    done = failed_workflow()
    response = admin_client.post(CHANGELIST, {
        "action": "cancel_workflows", "_selected_action": [wf.pk, done.pk], "index": 0,
    }, follow=True)
    wf.refresh_from_db()
    assert wf.state == Workflow.State.CANCELED
    assert set(wf.nodes.values_list("state", flat=True)) == {"CANCELED"}
    assert messages_of(response) == ["1 workflow canceled.", "1 workflow had already ended."]


def test_cancel_workflows__only_finished_ones_selected_gives_one_clear_message(admin_client):
    done, other = failed_workflow(), failed_workflow()
    response = admin_client.post(CHANGELIST, {
        "action": "cancel_workflows", "_selected_action": [done.pk, other.pk], "index": 0,
    }, follow=True)
    assert messages_of(response) == ["2 workflows had already ended."]


def test_node_list__workflow_column_names_the_workflow_and_its_short_id(admin_client):
    wf = make_workflow("nightly")
    content = admin_client.get(NODE_CHANGELIST).content.decode()
    assert f'title="{wf.pk}">nightly <code>{str(wf.pk)[:8]}</code></a>' in content


def test_retry_workflows__resets_failed_nodes_and_resumes(admin_client):
    wf = failed_workflow()
    response = admin_client.post(CHANGELIST, {
        "action": "retry_workflows", "_selected_action": [wf.pk], "index": 0,
    }, follow=True)
    wf.refresh_from_db()
    assert wf.state == Workflow.State.RUNNING
    assert wf.nodes.get(position=0).attempts == 2
    assert messages_of(response)[0].startswith("1 workflow retried (")


def test_tick_workflows__starts_an_initial_workflow(admin_client):
    wf = make_workflow()
    assert wf.state == Workflow.State.INITIAL
    response = admin_client.post(CHANGELIST, {
        "action": "tick_workflows", "_selected_action": [wf.pk], "index": 0,
    }, follow=True)
    wf.refresh_from_db()
    assert wf.state == Workflow.State.RUNNING
    assert wf.nodes.get(position=0).state == "QUEUED"
    assert messages_of(response) == ["1 workflow ticked."]


def test_actions__declare_change_permission():
    model_admin = WorkflowAdmin(Workflow, admin.site)
    for name in ("cancel_workflows", "retry_workflows", "tick_workflows"):
        assert getattr(model_admin, name).allowed_permissions == ("change",)


def test_actions__view_only_staff_cannot_run_them():
    wf = make_workflow()
    client = staff("view_workflow")
    page = client.get(CHANGELIST).content.decode()
    assert "cancel_workflows" not in page
    client.post(CHANGELIST, {"action": "cancel_workflows", "_selected_action": [wf.pk], "index": 0})
    assert client.post(act_url(wf, "cancel_workflows")).status_code == 403
    assert "cancel_workflows" not in client.get(change_url(wf)).content.decode()
    wf.refresh_from_db()
    assert wf.state == Workflow.State.INITIAL


def test_actions__staff_with_change_permission_can_run_them():
    wf = make_workflow()
    client = staff("view_workflow", "change_workflow")
    response = client.post(act_url(wf, "cancel_workflows"))
    assert response.status_code == 302 and response["Location"] == change_url(wf)
    wf.refresh_from_db()
    assert wf.state == Workflow.State.CANCELED


def test_act_view__csrf_protected(admin_user):
    wf = make_workflow()
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(act_url(wf, "cancel_workflows")).status_code == 403
    assert client.post(CHANGELIST, {
        "action": "cancel_workflows", "_selected_action": [wf.pk], "index": 0,
    }).status_code == 403
    wf.refresh_from_db()
    assert wf.state == Workflow.State.INITIAL


def test_act_view__get_is_refused(admin_client):
    wf = make_workflow()
    assert admin_client.get(act_url(wf, "cancel_workflows")).status_code == 405


# -- change page -------------------------------------------------------------------------------------


def test_change_page__read_only_svg_dag_legend_events_and_payload(admin_client):
    wf = make_workflow("drawn", custom_payload={"user": 7, "tags": ["a", "b"]})
    engine.tick(wf.pk, scheduled=False)
    content = admin_client.get(change_url(wf)).content.decode()
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="dy-dag dy-fit"' in content
    first = wf.nodes.get(position=0)
    join = wf.nodes.get(kind="join")
    node_url = reverse("admin:django_dyrygent_workflownode_change", args=[first.pk])
    assert f'<a href="{node_url}" id="dy-n{first.pk}" class="dy-node dy-s-QUEUED">' in content
    assert f'id="dy-n{join.pk}" class="dy-node dy-s-PENDING dy-dot"' in content
    assert 'class="dy-legend"' in content and 'dy-swatch dy-s-UPSTREAM_FAILED' in content
    assert '&quot;tags&quot;: [\n    &quot;a&quot;' in content  # pretty-printed payload
    assert "Latest 2 events" in content and "RUNNING" in content
    assert 'name="_save"' not in content and 'name="_continue"' not in content
    assert 'src="/static/django_dyrygent/dag.js"' in content
    assert 'href="/static/django_dyrygent/dag.css"' in content
    assert "<style" not in content.split('id="dy-panel"')[1]


def test_change_page__post_is_refused(admin_client):
    wf = make_workflow()
    assert admin_client.post(change_url(wf), {"name": "renamed"}).status_code == 403
    wf.refresh_from_db()
    assert wf.name == "wf"


def test_change_page__query_count_does_not_grow_with_nodes(admin_client):
    small, large = make_workflow("small", width=8), make_workflow("large", width=1998)
    assert small.nodes_total == 10 and large.nodes_total == 2000
    for wf in (small, large):
        engine.tick(wf.pk, scheduled=False)
    counts = []
    for wf in (small, large):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(change_url(wf))
        assert response.status_code == 200
        counts.append(len(queries))
    assert 0 < counts[0] == counts[1]


def test_change_page__query_count_does_not_grow_when_nothing_collapses(admin_client, monkeypatch):
    monkeypatch.setattr(WorkflowAdmin, "dag_collapse_threshold", 10**9)
    small, large = make_workflow("small", width=8), make_workflow("large", width=1998)
    counts = []
    for wf in (small, large):
        with CaptureQueriesContext(connection) as queries:
            content = admin_client.get(change_url(wf)).content.decode()
        counts.append(len(queries))
        assert content.count('class="dy-node ') == wf.nodes.count()
    assert 0 < counts[0] == counts[1]


def test_change_page__big_group_is_one_box_linking_to_its_nodes(admin_client):
    wf = make_workflow("wide", width=30)
    content = admin_client.get(change_url(wf)).content.decode()
    assert "30 × record" in content
    link = f"{NODE_CHANGELIST}?workflow={wf.pk}&amp;task_name=tests.record"
    assert f'<a href="{link}"' in content
    other = make_workflow("other", width=1)
    listing = admin_client.get(NODE_CHANGELIST, {"workflow": wf.pk, "task_name": "tests.record"})
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 31  # a + 30 b
    assert other.nodes.get(position=0).task_id not in listing.content.decode()


def test_change_page__escapes_every_user_string(admin_client):
    wf = make_workflow(XSS, width=1, custom_payload={"k": XSS})
    WorkflowNode.objects.filter(workflow=wf).update(
        task_name=XSS, signature={"task": XSS, "args": [XSS], "kwargs": {"x": XSS}},
        result={"r": XSS}, error=f"{XSS}\nTraceback", reason=XSS, state="FAILURE",
    )
    Workflow.objects.filter(pk=wf.pk).update(error=XSS)
    node = wf.nodes.get(position=0)
    pages = [
        admin_client.get(change_url(wf)),
        admin_client.get(reverse("admin:django_dyrygent_workflow_dag", args=[wf.pk])),
        admin_client.get(CHANGELIST),
        admin_client.get(NODE_CHANGELIST),
        admin_client.get(reverse("admin:django_dyrygent_workflownode_change", args=[node.pk])),
    ]
    for page in pages:
        assert page.status_code == 200
        text = page.content.decode()
        assert XSS not in text
        assert "&lt;script&gt;alert(" in text
    svg = pages[1].content.decode()
    assert "<title>&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt;\nstate: FAILURE" in svg


def test_change_page__escapes_collapsed_group_label_and_link(admin_client):
    wf = make_workflow("group", width=25)
    WorkflowNode.objects.filter(workflow=wf, task_name="tests.record").update(task_name=XSS)
    content = admin_client.get(change_url(wf)).content.decode()
    assert XSS not in content
    assert "<title>25 × &lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt;\n" in content
    assert "task_name=%3Cscript%3Ealert%28%22xss%22%29%3C%2Fscript%3E" in content


# -- status endpoint --------------------------------------------------------------------------------


def test_status_json__counters_and_item_states(admin_client):
    wf = make_workflow(width=25)
    engine.tick(wf.pk, scheduled=False)
    data = admin_client.get(status_url(wf)).json()
    first = wf.nodes.get(position=0)
    box = wf.nodes.filter(task_name="tests.record").order_by("position")[1]
    assert data["state"] == "RUNNING" and data["final"] is False
    assert (data["nodes_total"], data["nodes_done"]) == (wf.nodes_total, 0)
    assert data["items"][f"n{first.pk}"] == {"state": "QUEUED"}
    assert data["items"][f"g{box.pk}"] == {"state": "PENDING", "text": "0/25 done", "bar": 0}
    html = admin_client.get(change_url(wf)).content.decode()
    assert f'data-shape="{data["shape"]}"' in html
    for item_id in data["items"]:
        assert f'id="dy-{item_id}"' in html


def test_status_json__final_workflow(admin_client):
    data = admin_client.get(status_url(failed_workflow())).json()
    assert data["final"] is True and data["state"] == "FAILURE"


def test_status_json__not_final_until_callbacks_ran(admin_client):
    wf = Workflow(name="with finalizer")
    wf.add_signature(record.si("a"))
    wf.link_finalizer(record.si("cleanup"))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    first = wf.nodes.get(position=0)
    outcomes.node_failed(wf.pk, first.task_id, exception=ValueError("boom"))
    finalizer = wf.nodes.get(kind="finalizer")
    assert finalizer.state == "QUEUED"
    data = admin_client.get(status_url(wf)).json()
    assert data["state"] == "FAILURE" and data["final"] is False
    assert 'data-final="false"' in admin_client.get(change_url(wf)).content.decode()
    outcomes.node_succeeded(wf.pk, finalizer.task_id, None)
    assert admin_client.get(status_url(wf)).json()["final"] is True


def test_status_json__needs_staff_and_view_permission(client):
    wf = make_workflow()
    response = client.get(status_url(wf))
    assert response.status_code == 302 and "/login/" in response["Location"]
    User.objects.create_user("plain", password="pw")
    client.login(username="plain", password="pw")
    assert client.get(status_url(wf)).status_code == 302
    assert staff().get(status_url(wf)).status_code == 403
    assert staff_client_without_view().get(
        reverse("admin:django_dyrygent_workflow_dag", args=[wf.pk])
    ).status_code == 403
    User.objects.filter(username="staff").delete()
    assert staff("view_workflow").get(status_url(wf)).status_code == 200


def test_status_json__unknown_workflow_is_404(admin_client):
    url = reverse("admin:django_dyrygent_workflow_status", args=["00000000-0000-0000-0000-000000000000"])
    assert admin_client.get(url).status_code == 404


def test_change_page__needs_view_permission():
    wf = make_workflow()
    assert staff().get(change_url(wf)).status_code == 403


# -- nodes ----------------------------------------------------------------------------------------------


def test_node_page__shows_call_result_error_attempts_and_links(admin_client):
    wf = failed_workflow()
    engine.retry(wf.pk)
    first = wf.nodes.get(position=0)
    WorkflowNode.objects.filter(pk=first.pk).update(result={"hosts": [1, 2]})
    follower = first.dependents.order_by("position").first()
    content = admin_client.get(
        reverse("admin:django_dyrygent_workflownode_change", args=[first.pk])
    ).content.decode()
    assert "&quot;args&quot;: [\n    &quot;a&quot;\n  ]" in content
    assert "&quot;hosts&quot;: [\n    1," in content
    assert first.previous_task_ids[0] in content
    assert reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]) in content
    assert reverse("admin:django_dyrygent_workflownode_change", args=[follower.pk]) in content
    assert 'name="_save"' not in content

    follower_page = admin_client.get(
        reverse("admin:django_dyrygent_workflownode_change", args=[follower.pk])
    ).content.decode()
    assert reverse("admin:django_dyrygent_workflownode_change", args=[first.pk]) in follower_page


def test_node_page__failed_node_shows_traceback(admin_client):
    wf = failed_workflow()
    first = wf.nodes.get(position=0)
    content = admin_client.get(
        reverse("admin:django_dyrygent_workflownode_change", args=[first.pk])
    ).content.decode()
    assert '<pre class="dy-pre">' in content and "Traceback: boom" in content


def test_node_admin__no_add_delete_or_edit(admin_client):
    wf = make_workflow()
    node = wf.nodes.first()
    url = reverse("admin:django_dyrygent_workflownode_change", args=[node.pk])
    assert admin_client.get(reverse("admin:django_dyrygent_workflownode_add")).status_code == 403
    delete_url = reverse("admin:django_dyrygent_workflownode_delete", args=[node.pk])
    assert admin_client.get(delete_url).status_code == 403
    assert admin_client.post(url, {"state": "SUCCESS"}).status_code == 403
    node.refresh_from_db()
    assert node.state == "PENDING"


def test_node_changelist__filters_and_search(admin_client):
    wf = failed_workflow()
    first = wf.nodes.get(position=0)

    def count(**params):
        return admin_client.get(NODE_CHANGELIST, params).context["cl"].result_count

    assert count(state__exact="FAILURE") == 1
    assert count(kind__exact="join") == 1
    assert count(task_name="tests.add") == 1
    assert count(q=first.task_id) == 1
    assert count(q="no-such-task-id") == 0
