"""The admin DAG in a real browser: it recolours itself while a real worker runs the workflow.

Headless Debian chromium + chromedriver, the live server and a real Celery
worker on the real broker. Skips only when the browser is not installed.
"""

import time

import pytest
from django.urls import reverse

from django_dyrygent.admin.workflows import WorkflowAdmin
from django_dyrygent.models import Workflow
from tests.conftest import wait_for
from tests.tasks import fail, record, square
from tests.worker.conftest import ARTIFACTS, BROWSER_MARKS, log_in

pytestmark = BROWSER_MARKS


def build_workflow():
    """fetch -> 3 builds -> 24 squares (drawn as one box) -> report, plus a failing branch."""
    wf = Workflow(name="provision hosts", custom_payload={"requested_by": "ops"})
    fetch = wf.add_signature(record.si("fetch", sleep=2))
    builds = [wf.add_signature(record.si(f"build-{h}", sleep=1), dependencies=[fetch]) for h in range(3)]
    checks = [wf.add_signature(square.si(i), dependencies=builds) for i in range(24)]
    wf.add_signature(record.si("report", sleep=1), dependencies=checks)
    alert = wf.add_signature(fail.si("disk full"), dependencies=[fetch])
    wf.add_signature(record.si("notify"), dependencies=[alert])
    wf.link_finalizer(record.si("cleanup"))
    return wf


def field_text(browser, name):
    return browser.execute_script(
        "var el = document.querySelector('.field-' + arguments[0] + ' .readonly');"
        "return el ? el.textContent.trim() : null;", name,
    )


def visible_actions(browser):
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('form[data-action]'))"
        ".filter(function (f) { return !f.hidden && f.offsetParent !== null; })"
        ".map(function (f) { return f.dataset.action; });"
    )


def bar_widths(browser):
    return browser.execute_script(
        "var out = {}; document.querySelectorAll('#dy-progress rect').forEach(function (r) {"
        "out[r.getAttribute('class').replace('dy-part-', '')] = parseFloat(r.getAttribute('width')); });"
        "return out;"
    )


def test_admin_dag__recolours_live_until_final(worker, live_server, browser, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setattr(WorkflowAdmin, "dag_poll_interval", 300)
    log_in(browser, live_server)

    wf = build_workflow().apply_async()
    fetch = wf.nodes.get(position=0)
    report = wf.nodes.get(task_name="tests.record", signature__args=["report"])
    wait_for(lambda: Workflow.objects.get(pk=wf.pk).state == Workflow.State.RUNNING, "the workflow to start")
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]))
    assert "provision hosts" in browser.title

    def classes(element_id):
        return browser.execute_script(
            "var el = document.getElementById(arguments[0]); return el ? el.getAttribute('class') : null;",
            element_id,
        )

    # The page was drawn while the workflow had barely started.
    assert "dy-s-SUCCESS" not in classes(f"dy-n{report.pk}")
    assert "dy-s-SUCCESS" not in classes(f"dy-n{fetch.pk}")
    assert field_text(browser, "nodes_done") == "0" and field_text(browser, "finished_at") == "-"
    assert visible_actions(browser) == ["cancel_workflows", "tick_workflows", "pause_workflows"]
    events_at_load = len(browser.find_elements(By.CSS_SELECTOR, "#dy-events tbody tr"))
    # Markers that a reload would wipe; the fetch node element must be recoloured in place.
    browser.execute_script(
        "window.dyMarker = 'still here'; window.dyFetch = document.getElementById(arguments[0]);",
        f"dy-n{fetch.pk}",
    )
    WebDriverWait(browser, 30, poll_frequency=0.1).until(lambda d: d.execute_script(
        "return window.dyFetch.isConnected && window.dyFetch.classList.contains('dy-s-SUCCESS');"
    ))

    ARTIFACTS.mkdir(exist_ok=True)
    time.sleep(0.5)  # not an assertion: lets the colour transitions end for the picture
    browser.find_element(By.ID, "dy-panel").screenshot(str(ARTIFACTS / "admin-dag-running.png"))
    # The counters, the bar and the event list follow without a reload.
    WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda d: int(field_text(d, "nodes_done")) >= 1 and bar_widths(d)["ok"] > 0
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#dy-events tbody tr")) > events_at_load
    browser.execute_script("document.querySelector('.field-nodes_done').scrollIntoView();")
    browser.save_screenshot(str(ARTIFACTS / "admin-live-counters.png"))

    assert wf.wait(timeout=60) == Workflow.State.FAILURE  # the "disk full" branch
    # The page stops polling by itself once the workflow and its finalizer are done.
    WebDriverWait(browser, 30, poll_frequency=0.2).until(
        lambda d: not d.find_element(By.ID, "dy-live").is_displayed()
    )
    assert browser.find_element(By.ID, "dy-state").text == "Failure"
    assert "dy-s-SUCCESS" in classes(f"dy-n{report.pk}")
    assert browser.execute_script("return window.dyMarker;") == "still here"
    states = browser.execute_script(
        "return Array.from(document.querySelectorAll('#dy-dag .dy-node'), "
        "function (el) { return el.getAttribute('class'); });"
    )
    assert sum("dy-s-SUCCESS" in c for c in states) == len(states) - 2  # all but fail + notify
    assert sum("dy-s-FAILURE" in c for c in states) == 1
    assert sum("dy-s-UPSTREAM_FAILED" in c for c in states) == 1
    assert any("dy-group" in c for c in states)

    # Everything else on the page caught up too, without a reload.
    wf.refresh_from_db()
    assert field_text(browser, "nodes_done") == str(wf.nodes_done) == str(wf.nodes_total)
    assert field_text(browser, "nodes_failed") == "2"
    assert field_text(browser, "finished_at") not in ("-", "", None)
    assert field_text(browser, "duration") != "—"
    assert visible_actions(browser) == ["retry_workflows"]
    widths = bar_widths(browser)
    assert widths["failed"] > 0 and widths["ok"] > 0 and widths["rest"] == 0
    assert widths["ok"] + widths["failed"] == pytest.approx(100, abs=1)
    rows = browser.find_elements(By.CSS_SELECTOR, "#dy-events tbody tr")
    # The latest 50 events: the workflow's own end is among them, named as such.
    assert any("RUNNING → FAILURE" in row.text and "workflow" in row.text for row in rows)

    assert browser.save_screenshot(str(ARTIFACTS / "admin-dag.png"))
    browser.find_element(By.ID, "dy-panel").screenshot(str(ARTIFACTS / "admin-dag-panel.png"))


def test_admin_cancel__asks_before_canceling(worker, live_server, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    log_in(browser, live_server)
    wf = Workflow(name="slow one")
    wf.add_signature(record.si("slow", sleep=3))
    wf.apply_async()
    # Running, not still INITIAL: only a running workflow offers Pause.
    wait_for(lambda: Workflow.objects.get(pk=wf.pk).state == Workflow.State.RUNNING, "the workflow to start")
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]))
    assert visible_actions(browser) == ["cancel_workflows", "tick_workflows", "pause_workflows"]

    browser.find_element(By.NAME, "cancel_workflows").click()
    alert = WebDriverWait(browser, 5).until(lambda d: d.switch_to.alert)
    assert alert.text.startswith("Cancel this workflow?")
    alert.dismiss()
    wf.refresh_from_db()
    assert wf.state in (Workflow.State.INITIAL, Workflow.State.RUNNING)

    browser.find_element(By.NAME, "cancel_workflows").click()
    WebDriverWait(browser, 5).until(lambda d: d.switch_to.alert).accept()
    # The action posts the form and the page reloads: an element found just before goes stale.
    WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, "dy-state").text == "Canceled")
    wf.refresh_from_db()
    assert wf.state == Workflow.State.CANCELED
    assert visible_actions(browser) == ["retry_workflows"]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.find_element(By.ID, "dy-panel").screenshot(str(ARTIFACTS / "admin-canceled.png"))


def test_admin_lists__bars_in_colour_and_node_list_fits_1400_px(worker, live_server, browser):
    from selenium.webdriver.common.by import By

    log_in(browser, live_server)
    failed = build_workflow().apply_async()
    assert failed.wait(timeout=60) == Workflow.State.FAILURE
    waiting = Workflow(name="not started")
    waiting.add_signature(record.si("x"))
    waiting.save()  # never applied: 0 of 1 done

    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_changelist"))
    colours = browser.execute_script(
        "var out = {}; document.querySelectorAll('svg.dy-progress rect').forEach(function (r) {"
        "var name = r.getAttribute('class'); out[name] = getComputedStyle(r).fill; }); return out;"
    )
    assert colours["dy-part-ok"] == "rgb(46, 158, 91)"
    assert colours["dy-part-failed"] == "rgb(214, 69, 69)"
    assert colours["dy-part-rest"] == "rgb(238, 241, 244)"  # pale: 0 / 1 does not look full
    ARTIFACTS.mkdir(exist_ok=True)
    browser.find_element(By.ID, "result_list").screenshot(str(ARTIFACTS / "admin-list-bars.png"))

    browser.get(live_server.url + reverse("admin:django_dyrygent_workflownode_changelist")
                + f"?workflow={failed.pk}")
    browser.save_screenshot(str(ARTIFACTS / "admin-node-list.png"))
    # Neither the page nor the list's own box scrolls sideways.
    assert browser.execute_script("return document.documentElement.scrollWidth;") <= 1400
    overflow = browser.execute_script(
        "var box = document.querySelector('#changelist .results'); return box.scrollWidth - box.clientWidth;"
    )
    assert overflow <= 0
    heights = browser.execute_script(
        "return Array.from(document.querySelectorAll('#result_list td.field-short_task_id'),"
        "function (td) { return td.querySelector('code').getClientRects().length; });"
    )
    assert heights and set(heights) == {1}  # each id on one line


def test_admin_timeline__two_thousand_nodes_draw_one_row_per_task_name_and_zoom(live_server, browser):
    from celery import group
    from django.utils import timezone
    from selenium.webdriver.common.by import By

    from django_dyrygent.graph import timeline
    from tests.tasks import add

    wf = Workflow(name="wide")
    wf.add_celery_canvas(group(add.si(i, i) for i in range(2000)))
    wf.apply_async()
    now = timezone.now()
    wf.nodes.update(queued_at=now, started_at=now, finished_at=now, state="SUCCESS")
    log_in(browser, live_server)
    # The Gantt alone, drawn on the server: asked and answered (to the last byte) in under a second.
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_timeline", args=[wf.pk]))
    served = browser.execute_script(
        "var t = performance.getEntriesByType('navigation')[0]; return t.responseEnd - t.requestStart;")
    assert "add ×2000" in browser.page_source and 0 < served < 1000, served
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]))
    panel = browser.find_element(By.ID, "dy-timeline")
    rows = panel.find_elements(By.CSS_SELECTOR, "svg.dy-gantt .dy-row")
    assert len(rows) == 1 and "add ×2000" in rows[0].text
    ARTIFACTS.mkdir(exist_ok=True)
    panel.screenshot(str(ARTIFACTS / "admin-timeline-grouped.png"))
    rows[0].click()
    zoomed = browser.find_element(By.ID, "dy-timeline")
    assert len(zoomed.find_elements(By.CSS_SELECTOR, "svg.dy-gantt .dy-row")) == timeline.ROW_LIMIT
    assert "page 1 of" in zoomed.text
