"""The timeline (Gantt) of a workflow: rows, positions proportional to time, grouping, zoom, escaping."""

import re
from datetime import timedelta

import pytest
from celery import chain, group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dyrygent.graph import timeline
from django_dyrygent.models import Workflow, WorkflowNode
from tests.tasks import add, record
from tests.unit.conftest import change_url

pytestmark = pytest.mark.django_db
S = WorkflowNode.State


def timed(wf, times):
    """Give nodes (by position) queued/started/finished times, seconds after a fixed start."""
    t0 = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    for position, (queued, started, finished, state) in times.items():
        WorkflowNode.objects.filter(workflow=wf, position=position).update(
            state=state,
            queued_at=t0 + timedelta(seconds=queued) if queued is not None else None,
            started_at=t0 + timedelta(seconds=started) if started is not None else None,
            finished_at=t0 + timedelta(seconds=finished) if finished is not None else None,
        )
    return t0


def chain_of_three():
    wf = Workflow(name="three")
    wf.add_celery_canvas(chain(record.si("a"), record.si("b"), add.si(1, 2)))
    wf.apply_async()
    return wf


def bars(svg):
    """(class, x, width) of every bar, in document order."""
    return [(c, float(x), float(w)) for c, x, w in
            re.findall(r'<rect class="dy-(wait|run)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)]


def test_load__a_row_per_node_with_x_proportional_to_time():
    wf = chain_of_three()
    timed(wf, {0: (0, 10, 20, S.SUCCESS), 1: (20, 30, 60, S.SUCCESS), 2: (60, 70, 100, S.SUCCESS)})
    chart = timeline.load(wf)
    assert [r.label for r in chart.rows] == ["0. record", "1. record", "2. add"]
    assert chart.seconds == 100 and not chart.grouped
    drawn = bars(timeline.svg_markup(chart, lambda row: "#"))
    scale = timeline.CHART_WIDTH / 100
    left = timeline.LABEL_WIDTH
    assert drawn[0] == ("wait", left, pytest.approx(10 * scale))
    assert drawn[1] == ("run", pytest.approx(left + 10 * scale), pytest.approx(10 * scale))
    assert drawn[3] == ("run", pytest.approx(left + 30 * scale), pytest.approx(30 * scale))


def test_load__a_node_still_running_runs_to_now_and_one_never_queued_draws_nothing():
    wf = chain_of_three()
    timed(wf, {0: (0, 5, 10, S.SUCCESS), 1: (10, 12, None, S.STARTED)})
    chart = timeline.load(wf)
    assert chart.end >= timezone.now() - timedelta(seconds=5)
    svg = timeline.svg_markup(chart, lambda row: "#")
    assert len(bars(svg)) == 4  # the pending third node has no bar
    assert svg.count('class="dy-row ') == 3


def test_tooltip__times_to_the_second_and_durations():
    wf = chain_of_three()
    t0 = timed(wf, {0: (0, 10, 75, S.SUCCESS)})
    row = timeline.load(wf).rows[0]
    text = timeline.tooltip(row)
    assert timezone.localtime(t0).strftime("%H:%M:%S") in text
    assert "\nwaited: 10.0 s\nran: 1 min 5 s" in text


def test_load__above_the_row_limit_rows_are_task_names_and_a_group_zooms_with_pages():
    wf = Workflow(name="wide")
    wf.add_celery_canvas(chain(record.si("a"), group(add.si(i, i) for i in range(30)), record.si("z")))
    wf.apply_async()
    timed(wf, {p: (0, p, p + 1, S.SUCCESS) for p in range(32)})
    chart = timeline.load(wf, row_limit=10)
    assert chart.grouped and chart.total == 32
    rows = {r.key: r for r in chart.rows}
    assert set(rows) == {"tests.record", "tests.add"}
    assert rows["tests.add"].states[S.SUCCESS] == 30 and rows["tests.add"].label.endswith("×30")
    zoomed = timeline.load(wf, group="tests.add", page=2, row_limit=10)
    assert not zoomed.grouped and zoomed.pages == 3 and zoomed.page == 2
    assert [r.label.split(".")[0] for r in zoomed.rows] == [str(p) for p in range(11, 21)]


def test_group_row__a_member_still_moving_keeps_the_bar_open_and_the_most_urgent_state_wins():
    wf = Workflow(name="mixed")
    wf.add_celery_canvas(group(add.si(i, i) for i in range(4)))
    wf.apply_async()
    timed(wf, {0: (0, 1, 2, S.SUCCESS), 1: (0, 1, 3, S.FAILURE),
               2: (0, 1, None, S.STARTED), 3: (0, None, None, S.QUEUED)})
    chart = timeline.load(wf, row_limit=2)
    (row,) = chart.rows
    assert row.state == S.FAILURE and row.finished is None
    # Three members ran, together from second 1 to 2: the profile's peak is 3.
    assert "<title>3 at most at once</title>" in timeline.svg_markup(chart, lambda r: "#")


def test_load__one_query_whatever_the_size():
    wf = Workflow(name="big")
    wf.add_celery_canvas(group(add.si(i, i) for i in range(2000)))
    wf.apply_async()
    with CaptureQueriesContext(connection) as queries:
        chart = timeline.load(wf)
        timeline.svg_markup(chart, lambda row: "#")
    assert len(queries) == 1
    assert chart.grouped and len(chart.rows) == 1 and chart.total == 2000


def test_svg_markup__escapes_task_names():
    row = timeline.Row(label='<script>alert("x")</script>', state=S.SUCCESS, queued=None, started=None,
                       finished=None, key=1)
    chart = timeline.Timeline(rows=[row], start=None, end=None)
    svg = timeline.svg_markup(chart, lambda r: '"><script>')
    assert "<script>" not in svg and "&lt;script&gt;" in svg


@pytest.mark.parametrize(("seconds", "step"), [(5, 1), (100, 10), (3600, 300), (10**6, 86400)])
def test_tick_step__keeps_ticks_apart(seconds, step):
    assert timeline.tick_step(seconds) == step


def test_change_page__shows_the_timeline_and_zooms_into_a_task_name(admin_client, monkeypatch):
    monkeypatch.setattr(timeline, "ROW_LIMIT", 3)
    wf = Workflow(name="wide")
    wf.add_celery_canvas(group(add.si(i, i) for i in range(5)))
    wf.apply_async()
    timed(wf, {p: (0, 1, 2, S.SUCCESS) for p in range(5)})
    content = admin_client.get(change_url(wf)).content.decode()
    assert 'id="dy-timeline"' in content and 'class="dy-gantt"' in content
    assert "one row per task name" in content and "?timeline_group=tests.add#dy-timeline" in content
    zoomed = admin_client.get(change_url(wf), {"timeline_group": "tests.add", "timeline_page": "2"}).content.decode()
    assert "page 2 of 2" in zoomed
    fragment = admin_client.get(change_url(wf).replace("/change/", "/timeline/"), {"timeline_group": "tests.add"})
    assert fragment.status_code == 200 and fragment.content.decode().count('class="dy-row ') == 3
