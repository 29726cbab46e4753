"""A real headless Chromium for the console, driven by selenium through Debian's chromedriver.

Nothing here reaches the network: the driver and browser paths are given, so Selenium Manager
never runs, and the browser only ever opens the loopback address of the stack under test.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.controller.browser import png_pixels

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"
# A drawn page has text, borders and backgrounds; a blank one a colour or two.
MIN_COLOURS = 8
MAX_HEIGHT = 10_000  # CSS pixels of a page kept as an artifact


@dataclass
class Chrome:
    """One browser window: `base` is the stack's URL; helpers wait, screenshot and check."""

    driver: Any
    base: str
    artifacts: Path
    seen_logs: list[dict[str, Any]] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def path(self) -> str:
        url: str = self.driver.current_url
        return url.removeprefix(self.base)

    def wait_for(self, css: str, text: str | None = None, timeout: float = 20.0) -> Any:
        """The first element matching `css` (containing `text`, if given) once it is shown."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        deadline = time.monotonic() + timeout
        last = "nothing matched"
        while True:
            try:
                for element in self.driver.find_elements(By.CSS_SELECTOR, css):
                    shown = element.text
                    if element.is_displayed() and (text is None or text in shown):
                        return element
                    last = f"last text {shown!r}"
            except StaleElementReferenceException:
                last = "the element was replaced while read"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {css!r}{f' with {text!r}' if text else ''} on {self.path()} "
                    f"after {timeout:.0f}s ({last}); page starts:\n"
                    f"{self.driver.find_element(By.TAG_NAME, 'body').text[:1500]}"
                )
            time.sleep(0.1)

    def texts(self, css: str) -> list[str]:
        """The texts of what matches `css`, read again if the page replaced it meanwhile."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        for _ in range(4):
            try:
                return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css)]
            except StaleElementReferenceException:
                time.sleep(0.1)
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css)]

    def log(self) -> list[dict[str, Any]]:
        """The browser console since the last call (Chromium hands each entry out once)."""
        fresh: list[dict[str, Any]] = self.driver.get_log("browser")
        self.seen_logs += fresh
        return fresh

    def assert_no_console_errors(self) -> None:
        severe = [e for e in self.log() if e.get("level") == "SEVERE"]
        assert not severe, f"console errors on {self.path()}: {severe}"

    def screenshot(self, name: str) -> Path:
        """Save the whole page as test-artifacts/console/<name>.png; the window must show a
        drawn page (checked on the window alone: decoding a long page in Python is slow) and
        the console must have no errors."""
        shot = self.artifacts / f"{name}.png"
        shot.write_bytes(self.whole_page_png())
        data: bytes = self.driver.get_screenshot_as_png()
        width, height, colours = png_pixels(data)
        assert (width, height) > (0, 0)
        assert len(colours) > MIN_COLOURS, f"{shot} looks blank ({len(colours)} colours)"
        self.assert_no_console_errors()
        return shot

    def whole_page_png(self) -> bytes:
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], MAX_HEIGHT)}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
        )
        return base64.b64decode(shot["data"])


def missing_browser() -> str | None:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            return f"{binary} is missing: scripts/setup.sh --for tests installs chromium-driver"
    if shutil.which("chromium") is None:
        return "chromium is not on PATH: scripts/setup.sh --for tests installs it"
    return None


def start_chrome(base: str, artifacts: Path, profile: Path) -> Chrome:
    # Selenium Manager would look up drivers online when a path is missing: forbid it outright.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--no-sandbox",
        "--headless=new",
        "--window-size=1366,900",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "cd.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    artifacts.mkdir(parents=True, exist_ok=True)
    return Chrome(driver, base, artifacts)


@pytest.fixture
def chrome_at(tmp_path: Path) -> Iterator[Any]:
    """chrome_at(base_url) -> a new headless Chromium (several may be open, e.g. two roles);
    each is quit after the test, and its chromedriver process with it."""
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    made: list[Chrome] = []

    def open_at(base: str) -> Chrome:
        profile = tmp_path / f"chrome-{len(made)}" / "profile"
        profile.mkdir(parents=True)
        chrome = start_chrome(base, ARTIFACTS, profile)
        made.append(chrome)
        return chrome

    yield open_at
    for chrome in made:
        chrome.driver.quit()
