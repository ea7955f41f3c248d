"""The grid of past runs of a catalogue definition: runs as columns, steps as rows, coloured by state."""

import pytest
from celery import chain
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_dyrygent.graph import grid
from django_dyrygent.models import Workflow, WorkflowNode
from tests.tasks import add, record
from tests.unit.conftest import change_url

pytestmark = pytest.mark.django_db
S = WorkflowNode.State


def run(definition, steps=2, failing=None, name="run"):
    wf = Workflow(name=name, definition=definition)
    wf.add_celery_canvas(chain(*[record.si(f"s{i}") for i in range(steps)], add.si(1, 2)))
    wf.apply_async()
    wf.nodes.update(state=S.SUCCESS)
    if failing is not None:
        wf.nodes.filter(position=failing).update(state=S.FAILURE)
    return wf


def test_load__runs_oldest_first_steps_by_position_cells_by_run_and_step():
    first, second = run("tests.nightly"), run("tests.nightly", steps=3, failing=1)
    run("tests.other")
    with CaptureQueriesContext(connection) as queries:
        result = grid.load("tests.nightly")
    assert len(queries) == 2
    assert [r["id"] for r in result.runs] == [first.pk, second.pk]
    # Steps are named after the newest run that has them: position 2 is "add" in the first run only.
    assert result.steps == [(0, "record"), (1, "record"), (2, "record"), (3, "add")]
    assert result.cells[(second.pk, 1)]["state"] == S.FAILURE
    assert result.cells[(first.pk, 1)]["state"] == S.SUCCESS
    assert (first.pk, 3) not in result.cells  # the first run had no fourth step


def test_load__keeps_the_last_runs_and_cuts_steps_past_the_limit():
    runs = [run("tests.nightly", name=f"r{i}") for i in range(4)]
    result = grid.load("tests.nightly", runs=2, row_limit=2)
    assert [r["id"] for r in result.runs] == [runs[2].pk, runs[3].pk]
    assert len(result.steps) == 2 and result.truncated == 1


def test_svg_markup__a_cell_per_node_links_and_escapes():
    wf = run("tests.nightly", name='<img src=x onerror="boom">')
    svg = grid.svg_markup(grid.load("tests.nightly"), lambda pk: f"/run/{pk}/", lambda pk: f"/node/{pk}/")
    assert svg.count("/node/") == 3 and f"/run/{wf.pk}/" in svg
    assert "<img" not in svg and "&lt;img" in svg


def test_grid_page__drawn_for_a_user_who_may_view_workflows_and_refused_otherwise(admin_client, client):
    wf = run("tests.nightly", failing=0)
    url = reverse("admin:django_dyrygent_workflow_grid", args=["tests.nightly"])
    content = admin_client.get(url).content.decode()
    assert 'class="dy-grid"' in content and "Past runs of tests.nightly" in content
    assert "?definition=tests.nightly" in content
    assert f'href="{reverse("admin:django_dyrygent_workflow_grid", args=["tests.nightly"])}"' in \
        admin_client.get(change_url(wf)).content.decode()
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    assert client.get(url).status_code == 200


def test_grid_page__a_definition_without_runs_says_so(admin_client):
    content = admin_client.get(reverse("admin:django_dyrygent_workflow_grid", args=["tests.never"])).content.decode()
    assert "This definition has no run yet." in content
