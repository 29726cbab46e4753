"""The job form in headless Chromium against the app served for real: choosing another program
asks for its parameters (forms.js, allowed by the CSP), what was typed stays, a bad parameter
comes back with the API's message beside it, and a good form lands on the new job's page."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.controller.conftest import Tokens
from tests.controller.support import register_host, wait_for

DRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def served(app: FastAPI) -> Iterator[str]:
    """The module's app on a loopback port, in a thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="served", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "the server to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def chrome() -> Iterator[Any]:
    if shutil.which("chromium") is None or not os.path.exists(DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_form_follows_the_program_and_submits(
    served: str, chrome: Any, client: Any, tokens: Tokens
) -> None:
    register_host(client, tokens.headers("admin"), "js-1", role="web")
    chrome.get(f"{served}/signin")
    chrome.find_element(By.NAME, "token").send_keys(tokens.token("operator"))
    chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(chrome, 10).until(lambda d: "/fleet" in d.current_url)
    chrome.get(f"{served}/jobs/new")
    chrome.find_element(By.ID, "targets-names").send_keys("js-1")
    assert not chrome.find_elements(By.ID, "param-frequency")
    Select(chrome.find_element(By.ID, "program")).select_by_value("cpu_profile")
    WebDriverWait(chrome, 10).until(lambda d: "program=cpu_profile" in d.current_url)
    frequency = chrome.find_element(By.ID, "param-frequency")
    assert frequency.get_attribute("value") == "49" and frequency.get_attribute("max") == "1000"
    assert chrome.find_element(By.ID, "targets-names").get_attribute("value") == "js-1"
    assert "csrf" not in chrome.current_url
    frequency.clear()
    frequency.send_keys("5000")
    chrome.find_element(By.ID, "submit-job").click()
    error = WebDriverWait(chrome, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, 'p.field-error[data-field="params.frequency"]')
    )
    assert error.text == "params.frequency: 5000 is above the maximum 1000"
    frequency = chrome.find_element(By.ID, "param-frequency")
    assert frequency.get_attribute("value") == "5000"
    frequency.clear()
    frequency.send_keys("99")
    chrome.find_element(By.ID, "submit-job").click()
    WebDriverWait(chrome, 10).until(lambda d: "/jobs/new" not in d.current_url)
    assert chrome.current_url.removeprefix(served).startswith("/jobs/")
    scripts = [e for e in chrome.get_log("browser") if e.get("source") != "network"]
    assert scripts == []  # no CSP refusal, no script error
