"""The live page's refresh: paused and resumed by the person watching, at the interval they pick (Chromium)."""

from django.urls import reverse

from django_dyrygent.admin.workflows import WorkflowAdmin
from django_dyrygent.models import Workflow
from tests.models import Execution
from tests.tasks import hold
from tests.worker.conftest import BROWSER_MARKS, log_in

pytestmark = BROWSER_MARKS

TIMEOUT = 60


def test_admin_refresh__pause_resume_and_a_remembered_interval(worker, live_server, browser, monkeypatch):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    monkeypatch.setattr(WorkflowAdmin, "dag_poll_interval", 300)
    log_in(browser, live_server)
    wf = Workflow(name="held for the refresh test")
    wf.add_signature(hold.si("refresh"))
    wf.apply_async()
    url = live_server.url + reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])
    browser.get(url)
    pause = browser.find_element(By.ID, "dy-pause")
    interval = Select(browser.find_element(By.ID, "dy-interval"))
    assert pause.text == "Pause" and interval.first_selected_option.text == "1 s"  # nearest to the page's 0.3 s

    pause.click()
    assert pause.text == "Resume"
    assert browser.execute_script("return document.getElementById('dy-panel').dataset.refresh;") == "paused"
    assert "dy-paused" in browser.find_element(By.ID, "dy-live").get_attribute("class")

    Execution.objects.create(label="release:refresh")
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    pause.click()  # resumed: it asks at once, sees the end and stops
    WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda d: d.find_element(By.ID, "dy-state").text == "Success"
        and not d.find_element(By.ID, "dy-refresh").is_displayed()
    )

    # A picked interval is kept for the next pages.
    other = Workflow(name="second page")
    other.add_signature(hold.si("refresh-2"))
    other.apply_async()
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_change", args=[other.pk]))
    Select(browser.find_element(By.ID, "dy-interval")).select_by_visible_text("10 s")
    browser.refresh()
    assert Select(browser.find_element(By.ID, "dy-interval")).first_selected_option.text == "10 s"
    assert browser.execute_script("return window.localStorage.getItem('django_dyrygent.refresh');") == "10000"
    Execution.objects.create(label="release:refresh-2")
    assert other.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
