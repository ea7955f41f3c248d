"""The browser of the admin's browser tests: headless Debian chromium driven by Selenium."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Screenshots and page sources of failed browser tests (git-ignored).
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

#: The marks of every browser test: a real worker, and a skip when the browser is missing or
#: DYRYGENT_BROWSER_TESTS=0 (CI runs them in its SQLite pass and its version cells, not again per database).
BROWSER_MARKS = [
    pytest.mark.worker,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason=f"chromium ({CHROMIUM}) or chromedriver ({CHROMEDRIVER}) is not installed; "
               "apt-get install chromium chromium-driver",
    ),
    pytest.mark.skipif(os.environ.get("DYRYGENT_BROWSER_TESTS") == "0", reason="DYRYGENT_BROWSER_TESTS=0"),
]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", "--hide-scrollbars"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="dy-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()


def log_in(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    User.objects.create_superuser("root", "root@example.com", "pw")
    browser.get(live_server.url + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys("root")
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: "/login/" not in d.current_url)
