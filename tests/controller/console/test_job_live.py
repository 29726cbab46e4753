"""The job page in headless Chromium, live: the app served over HTTP, events fed through the
real Redis stream and Ingest while the page is open; it must follow them without reloading
and insert the report when the job ends."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.controller.conftest import Feeder, Tokens
from tests.controller.support import free_port, state, wait_for
from tests.controller.test_reports import _fleet_fed, _fleet_submitted

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def served(app: FastAPI) -> Iterator[str]:
    """The test's app (its database, its ingest) behind a real HTTP server on loopback."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="console-http", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the console to serve", 0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def chrome() -> Iterator[Any]:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, css: str) -> str:
    """The first match's text; read again when the page replaced it meanwhile (job.js swaps
    the hosts' rows for the server's once the job is final)."""
    for _ in range(4):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return str(found[0].text) if found else ""
        except StaleElementReferenceException:
            time.sleep(0.1)
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


def test_the_page_follows_the_job_and_shows_its_report_without_reloading(
    served: str, chrome: Any, client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    job, names = _fleet_submitted(client, tokens)
    runs = {r["host"]: r["id"] for r in job["runs"]}

    chrome.get(f"{served}/signin?next=/jobs/{job['id']}")
    chrome.find_element(By.NAME, "token").send_keys(tokens.token("operator"))
    chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(lambda: _text(chrome, "#job-state") == "pending", 20, "the job page", 0.1)
    chrome.execute_script("window.sameDocument = true;")  # gone if the page reloads
    assert chrome.find_elements(By.CSS_SELECTOR, "form#cancel")  # an operator's, while it runs

    first = names[0]
    feeder(first, state(runs[first], "running"), job_id=job["id"])
    row = f'tr[data-host="{first}"]'
    wait_for(lambda: _text(chrome, f"{row} td.state") == "running", 20, "running, live", 0.1)
    assert _text(chrome, "#job-state") == "running"
    _fleet_fed(feeder, job, names, hot=5000)

    wait_for(lambda: _text(chrome, "#job-state") == "partial", 30, "the job's end, live", 0.1)
    states = {n: _text(chrome, f'tr[data-host="{n}"] td.state') for n in names}
    assert states == {**dict.fromkeys(names[:5], "succeeded"), names[5]: "failed"}, states
    snapshots = [_text(chrome, f'tr[data-host="{n}"] td.snapshots') for n in names]
    assert snapshots == ["2"] * 5 + ["0"]
    assert "compile error: no such map" in _text(chrome, f'tr[data-host="{names[5]}"] td.why')
    assert not chrome.find_elements(By.ID, "report-pending")
    assert _text(chrome, "#job-finished").endswith(" UTC")
    assert not chrome.find_elements(By.CSS_SELECTOR, "form#cancel")  # nothing left to cancel
    wait_for(
        lambda: bool(chrome.find_elements(By.CSS_SELECTOR, "section#report ul#outliers li")),
        30,
        "the report, inserted",
        0.1,
    )
    sentences = [li.text for li in chrome.find_elements(By.CSS_SELECTOR, "ul#outliers li")]
    assert f"{names[4]}: p50 runqlat 16.1x the fleet median (4.1 ms vs 255 us)" in sentences
    assert chrome.find_elements(
        By.CSS_SELECTOR, "section#report svg[aria-label='heatmap of runqlat']"
    )
    assert len(chrome.find_elements(By.CSS_SELECTOR, "section#report a.download")) == 5
    assert chrome.execute_script("return window.sameDocument === true;")
    # base.html links no icon, so Chromium's own /favicon.ico request 404s: not this page's.
    errors = [
        e
        for e in chrome.get_log("browser")
        if e["level"] == "SEVERE" and "/favicon.ico" not in e["message"]
    ]
    assert not errors, errors
