"""The admin's start form in a real browser: errors shown in place, a valid start, the live DAG, run again.

Same set-up as test_browser.py (headless Debian chromium, the live server, the
suite's real worker); skips only when the browser is not installed.
"""

from django.urls import reverse

from django_dyrygent.admin.workflows import WorkflowAdmin
from django_dyrygent.models import Workflow
from tests.worker.conftest import ARTIFACTS, BROWSER_MARKS, log_in

pytestmark = BROWSER_MARKS


def test_start_form__errors_in_place_then_a_run_on_the_live_dag_then_run_again(
        worker, live_server, browser, monkeypatch):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setattr(WorkflowAdmin, "dag_poll_interval", 300)
    log_in(browser, live_server)

    # The list page links to the catalogue, which lists the definitions with their descriptions.
    browser.get(live_server.url + reverse("admin:django_dyrygent_workflow_changelist"))
    browser.find_element(By.ID, "dy-start-link").click()
    table = browser.find_element(By.ID, "dy-definitions").text
    assert "A report built from a form of its own." in table and "tests.add" in table
    browser.find_element(By.LINK_TEXT, "tests.report").click()

    # Bad values: the form comes back with Django's error note and per-field errors, nothing saved.
    day = browser.find_element(By.NAME, "day")
    day.send_keys("someday")
    hosts = browser.find_element(By.NAME, "hosts")
    hosts.clear()
    hosts.send_keys("9")
    browser.find_element(By.NAME, "_start").click()
    # The answer is the same URL: wait for its page, not the one the click left (under load
    # the old page is still there when the click returns, and it has no error note).
    WebDriverWait(browser, 20).until(lambda d: d.title.startswith("Error:"))
    assert "Please correct the errors below." in browser.find_element(By.ID, "content-main").text
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "ul.errorlist li")]
    assert errors == ["Enter a valid date.", "Ensure this value is less than or equal to 5."]
    assert browser.find_element(By.NAME, "day").get_attribute("value") == "someday"
    assert not Workflow.objects.exists()
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "catalogue-start-errors.png"))

    # Corrected: the start redirects to the workflow's page, whose DAG turns green live.
    day = browser.find_element(By.NAME, "day")
    day.clear()
    day.send_keys("2026-11-27")
    hosts = browser.find_element(By.NAME, "hosts")
    hosts.clear()
    hosts.send_keys("2")
    browser.find_element(By.NAME, "_start").click()
    WebDriverWait(browser, 20).until(lambda d: "/change/" in d.current_url)
    wf = Workflow.objects.get()
    assert browser.current_url.endswith(reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]))
    assert (wf.definition, wf.trigger, wf.started_by) == ("tests.report", "admin", "root")
    assert wf.wait(timeout=60) == Workflow.State.SUCCESS
    WebDriverWait(browser, 30, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, "dy-state").text == "Success"
    )

    # The page, live, now offers "Run again" (no reload): a new run with the recorded parameters.
    WebDriverWait(browser, 20, poll_frequency=0.2).until(
        lambda d: d.find_element(By.ID, "dy-run-again").is_displayed())
    browser.find_element(By.ID, "dy-run-again").click()
    WebDriverWait(browser, 20).until(lambda d: str(wf.pk) not in d.current_url and "/change/" in d.current_url)
    again = Workflow.objects.exclude(pk=wf.pk).get()
    assert again.parameters == wf.parameters == {"day": "2026-11-27", "hosts": 2, "mode": "fast"}
    assert again.wait(timeout=60) == Workflow.State.SUCCESS
    browser.save_screenshot(str(ARTIFACTS / "catalogue-run-again.png"))
