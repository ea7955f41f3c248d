"""The admin DAG in a real browser: it recolours itself while a real worker runs the workflow.

Headless Debian chromium + chromedriver, the live server and a real Celery
worker on the real broker. Skips only when the browser is not installed.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from django_dyrygent.admin import WorkflowAdmin
from django_dyrygent.models import Workflow
from tests.tasks import fail, record, square

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason=f"chromium ({CHROMIUM}) or chromedriver ({CHROMEDRIVER}) is not installed; "
               "apt-get install chromium chromium-driver",
    ),
]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", "--hide-scrollbars"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="dy-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()


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


def test_admin_dag__recolours_live_until_final(worker, live_server, browser, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setattr(WorkflowAdmin, "dag_poll_interval", 300)
    User.objects.create_superuser("root", "root@example.com", "pw")
    browser.get(live_server.url + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys("root")
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: "/login/" not in d.current_url)

    wf = build_workflow().apply_async()
    fetch = wf.nodes.get(position=0)
    report = wf.nodes.get(task_name="tests.record", signature__args=["report"])
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

    assert browser.save_screenshot(str(ARTIFACTS / "admin-dag.png"))
    browser.find_element(By.ID, "dy-panel").screenshot(str(ARTIFACTS / "admin-dag-panel.png"))
