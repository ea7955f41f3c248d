"""The operator's pages in a real browser (Chromium): why it failed, acting on one node, who is working.

Driven through the engine (no worker needed): what is checked is what the
page shows. Each test also leaves a screenshot in artifacts/ (the pictures in
docs/img come from there).
"""

from datetime import timedelta

import pytest
from celery import chain
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from django_dyrygent import engine, tasks
from django_dyrygent.engine import outcomes
from django_dyrygent.models import WorkerHeartbeat, Workflow, WorkflowNode
from tests.tasks import Boom, fail, record
from tests.worker.conftest import ARTIFACTS, BROWSER_MARKS

pytestmark = [*BROWSER_MARKS, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Committed here (the live server reads the rows): nothing may reach a worker of another test."""
    for name in ("publish", "send_tick", "revoke"):
        monkeypatch.setattr(f"django_dyrygent.engine.messaging.{name}", lambda *args, **kwargs: None)


def log_in(browser, live_server):  # noqa: F811
    """As a superuser, without the login form (the session cookie of a logged-in client)."""
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get_or_create(username="root", is_staff=True, is_superuser=True)[0])
    browser.get(live_server.url + "/admin/login/")
    browser.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value, "path": "/"})


def failed_workflow():
    wf = Workflow(name="nightly import")
    wf.add_celery_canvas(chain(record.si("download"), fail.si("bad row 42"), record.si("load"), record.si("index")))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_succeeded(wf.pk, wf.nodes.get(position=0).task_id, "ok")
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_failed(wf.pk, wf.nodes.get(position=1).task_id, exception=Boom("bad row 42"))
    wf.refresh_from_db()
    assert wf.state == Workflow.State.FAILURE
    return wf


def shoot(driver, name):
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def test_browser_workflow_list__says_why_it_failed_and_counts_apart(live_server, browser, settings):  # noqa: F811
    from selenium.webdriver.common.by import By

    settings.DYRYGENT_LIVENESS = True  # no worker beats here: the list warns
    wf = failed_workflow()
    Workflow.objects.create(name="waiting for a worker", state="RUNNING")
    with pytest.raises(LookupError):
        tasks.start_definition("reports.added-after-the-workers-started")
    log_in(browser, live_server)
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_changelist"))
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
               if "nightly import" in r.text)
    assert "4 / 4 done, 1 failed, 2 upstream failed" in row.text
    failing = wf.nodes.get(position=1)
    assert f"First failure: tests.fail [{failing.task_id}]: tests.tasks.Boom: bad row 42" in row.text
    messages = " ".join(ul.text for ul in browser.find_elements(By.CSS_SELECTOR, "ul.messagelist"))
    assert "No Celery worker is alive" in messages
    assert "1 scheduled start failed in the last 24 hours" in messages
    shoot(browser, "admin-workflow-list-why.png")


def test_browser_node_page__mark_succeeded_with_a_result_and_the_workflow_runs_on(
    live_server, browser,  # noqa: F811
):
    from selenium.webdriver.common.by import By

    wf = failed_workflow()
    failing = wf.nodes.get(position=1)
    log_in(browser, live_server)
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflownode_change", args=[failing.pk]))
    panel = browser.find_element(By.ID, "dy-node-actions")
    labels = [b.text for b in panel.find_elements(By.TAG_NAME, "button")]
    assert labels == ["Retry this node and what failed after it", "Mark succeeded", "Mark skipped"]
    browser.find_element(By.ID, "dy-result").send_keys('{"rows": 41}')
    browser.execute_script("arguments[0].scrollIntoView(false);", panel)
    shoot(browser, "admin-node-actions.png")
    panel.find_element(By.CSS_SELECTOR, 'button[name="mark_succeeded"]').click()
    assert "Node marked SUCCESS." in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    failing.refresh_from_db()
    assert (failing.state, failing.result) == ("SUCCESS", {"rows": 41})
    wf.refresh_from_db()
    assert wf.state == Workflow.State.RUNNING and wf.nodes.get(position=2).state == "QUEUED"


def test_browser_heartbeats__alive_stale_and_who_sweeps(live_server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    now = timezone.now()
    WorkerHeartbeat.objects.create(hostname="celery@web-1", pid=11, started_at=now - timedelta(hours=2),
                                   last_seen=now, queues=["celery", "reports"], active_task_ids=["a", "b"])
    WorkerHeartbeat.objects.create(hostname="celery@web-2", pid=12, started_at=now - timedelta(minutes=5),
                                   last_seen=now, queues=["celery"], reserved_task_ids=["c"])
    WorkerHeartbeat.objects.create(hostname="celery@web-3", pid=13, started_at=now - timedelta(days=1),
                                   last_seen=now - timedelta(minutes=20), queues=["celery"])
    log_in(browser, live_server)
    browser.get(live_server.url + reverse("admin:django_dyrygent_workerheartbeat_changelist"))
    rows = {r.find_element(By.CSS_SELECTOR, "th").text: r for r in
            browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")}
    assert rows["celery@web-1"].find_element(By.CSS_SELECTOR, ".field-status").text == "alive"
    assert rows["celery@web-3"].find_element(By.CSS_SELECTOR, ".field-status").text == "stale"
    sweeps = {name: r.find_element(By.CSS_SELECTOR, ".field-sweeps img").get_attribute("alt")
              for name, r in rows.items()}
    assert sweeps == {"celery@web-1": "True", "celery@web-2": "False", "celery@web-3": "False"}
    assert rows["celery@web-1"].find_element(By.CSS_SELECTOR, ".field-queue_list").text == "celery, reports"
    shoot(browser, "admin-worker-heartbeats.png")


def test_browser_worker_banner__comes_and_goes_with_the_heartbeat_without_reloading(
    live_server, browser, settings, monkeypatch,  # noqa: F811
):
    from selenium.webdriver.support.ui import WebDriverWait

    from django_dyrygent.admin.workflows import WorkflowAdmin

    settings.DYRYGENT_LIVENESS = True
    monkeypatch.setattr(WorkflowAdmin, "dag_poll_interval", 300)
    now = timezone.now()
    WorkerHeartbeat.objects.all().delete()
    worker = WorkerHeartbeat.objects.create(hostname="celery@web-1", pid=11, started_at=now - timedelta(hours=1),
                                            last_seen=now, queues=[settings.CELERY_TASK_DEFAULT_QUEUE])
    wf = Workflow(name="waits for a worker")
    wf.add_celery_canvas(chain(record.si("a"), record.si("b")))
    wf.apply_async()
    log_in(browser, live_server)

    def banner(driver):  # read in one script: the refresh may swap the element out between two calls
        return driver.execute_script(
            "var el = document.getElementById('dy-worker-warning'); return el ? el.textContent.trim() : '';")

    def beat(age):
        WorkerHeartbeat.objects.filter(pk=worker.pk).update(last_seen=timezone.now() - timedelta(seconds=age))

    for url in (reverse("admin:django_dyrygent_workflow_changelist"),
                reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])):
        beat(0)
        browser.get(live_server.url + url)
        assert banner(browser) == ""
        browser.execute_script("window.dyNotReloaded = true;")
        beat(3600)  # the worker went silent an hour ago
        WebDriverWait(browser, 30, poll_frequency=0.1).until(lambda d: "No Celery worker is alive" in banner(d))
        if url.endswith("/workflow/"):
            shoot(browser, "admin-workflow-list-no-worker.png")
        beat(0)  # it beats again
        WebDriverWait(browser, 30, poll_frequency=0.1).until(lambda d: banner(d) == "")
        assert browser.execute_script("return window.dyNotReloaded === true;")


def overflow(driver):
    """How far the page and the list's own box scroll sideways (0: they do not)."""
    return driver.execute_script(
        "var page = document.documentElement, box = document.querySelector('#changelist .results');"
        "return [page.scrollWidth - page.clientWidth, box.scrollWidth - box.clientWidth];"
    )


def test_browser_lists__fit_a_1400_px_window_with_long_names(live_server, browser, settings):  # noqa: F811
    from selenium.webdriver.common.by import By

    assert browser.execute_script("return window.innerWidth;") == 1400
    long_host = "eu-west-1-warehouse-replica-0042.internal.example.com"
    failed = Workflow(name="nightly-import-of-customer-orders-from-the-eu-west-1-warehouse-shards-01-to-64")
    failed.add_celery_canvas(chain(
        record.si(long_host, {"batch": "2026-12-07T00:00:00+00:00", "tables": ["orders", "order_lines"]}),
        fail.si("ConnectionResetError: the replica " + long_host + " closed the connection during COPY"),
        record.si("reindex-the-search-cluster-for-customer-orders-and-order-lines-after-import"),
    ))
    failed.apply_async()
    engine.tick(failed.pk, scheduled=False)
    outcomes.node_succeeded(failed.pk, failed.nodes.get(position=0).task_id, "ok")
    engine.tick(failed.pk, scheduled=False)
    outcomes.node_failed(failed.pk, failed.nodes.get(position=1).task_id, exception=Boom(
        "psycopg.OperationalError: consuming input failed: server closed the connection unexpectedly; "
        + long_host * 3))
    for i in range(3):
        other = Workflow(name=f"Quarterly revenue reconciliation for the Asia-Pacific subsidiaries, batch {i}")
        other.add_celery_canvas(chain(record.si(f"reconcile-{long_host}-{i}"), record.si("report")))
        other.apply_async()
    log_in(browser, live_server)

    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_changelist"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == 4
    shoot(browser, "admin-workflow-list-1400.png")
    assert overflow(browser) == [0, 0]
    created = browser.find_element(By.CSS_SELECTOR, "#result_list td.field-created time").text
    assert len(created.split()) == 2 and created.split()[1].count(":") == 2  # to the second

    browser.get(live_server.url + reverse("admin:django_dyrygent_workflownode_changelist"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == 9
    shoot(browser, "admin-node-list-1400.png")
    assert overflow(browser) == [0, 0]


def test_browser_dag__started_and_queued_pending_and_skipped_differ_by_more_than_colour(live_server, browser):  # noqa: F811
    from celery import group

    wf = Workflow(name="four states")
    wf.add_celery_canvas(group(record.si(state) for state in ("QUEUED", "STARTED", "PENDING", "SKIPPED")))
    wf.apply_async()
    for node in wf.nodes.all():
        WorkflowNode.objects.filter(pk=node.pk).update(state=node.args[0])
    log_in(browser, live_server)
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]))
    # What is left of a box once its colours are ignored: the outline's dashes and width, hollow or filled.
    marks = browser.execute_script(
        "var out = {}; document.querySelectorAll('#dy-dag a.dy-node').forEach(function (a) {"
        "  var rect = a.querySelector('rect'), style = getComputedStyle(rect);"
        "  var state = a.getAttribute('class').match(/dy-s-(\\w+)/)[1];"
        "  out[state] = [style.strokeDasharray, style.strokeWidth, style.fill === 'rgb(255, 255, 255)'];"
        "}); return out;"
    )
    assert set(marks) == {"QUEUED", "STARTED", "PENDING", "SKIPPED"}
    assert marks["STARTED"] != marks["QUEUED"] and marks["PENDING"] != marks["SKIPPED"]
    assert len({tuple(m) for m in marks.values()}) == 4
    swatches = browser.execute_script(
        "var out = {}; document.querySelectorAll('.dy-legend .dy-swatch').forEach(function (s) {"
        "  var style = getComputedStyle(s), state = (s.className.match(/dy-s-(\\w+)/) || [])[1];"
        "  if (state) { out[state] = [style.outlineStyle, style.boxShadow.replace(/rgba?\\([^)]*\\)/g, '')]; }"
        "}); return out;"
    )
    assert swatches["STARTED"] != swatches["QUEUED"] and swatches["PENDING"] != swatches["SKIPPED"]
