"""The dashboard in a real browser: headless Chromium reads the live numbers while a map runs.

Needs Debian's ``chromium`` and ``chromium-driver`` (tests/system-packages.sh
installs them as root) and selenium. A screenshot of the page is kept in
``test-artifacts/dashboard.png`` (or ``$DMP_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dmp

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are required under CI (tests/system-packages.sh installs them)")
        pytest.skip("chromium or chromedriver is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dmp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def read(driver: Any, element: str) -> str:
    return str(driver.find_element("id", element).text)


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:.0f} s for {what} (last: {last!r})")


def test_dashboard_shows_a_map_as_it_runs(browser: Any) -> None:
    def slow_square(x: int) -> int:  # defined here: it travels to the nodes by value
        time.sleep(0.1)
        return x * x

    with dmp.LocalCluster(nodes=2, processes=1, dashboard="127.0.0.1:0") as cluster:
        assert cluster.dashboard_url
        browser.get(cluster.dashboard_url)
        wait_until(lambda: read(browser, "slots") == "2", 30, "the page to show 2 slots")
        nodes = browser.find_elements("css selector", "#nodes tbody tr")
        assert sorted(row.get_attribute("data-name") for row in nodes) == ["local-1", "local-2"]

        result: list[int] = []
        pool = dmp.Pool(address=cluster.address, authkey=cluster.authkey)
        mapper = threading.Thread(target=lambda: result.extend(pool.map(slow_square, range(ITEMS), chunksize=1)))
        mapper.start()
        try:
            # While the map runs: slots busy, and a client row that has work.
            busy = wait_until(lambda: int(read(browser, "busy") or 0) > 0 and read(browser, "busy"), 30,
                              "busy > 0 on the page during the map")
            assert 1 <= int(busy) <= 2
            wait_until(lambda: browser.find_elements("css selector", "#clients tbody tr[data-name]"), 30,
                       "the client's row")
            mapper.join(120)
            assert not mapper.is_alive() and result == [x * x for x in range(ITEMS)]
            # After it: every task counted, nothing busy, nothing failed.
            wait_until(lambda: read(browser, "done") == str(ITEMS), 30, f"tasks done = {ITEMS} on the page")
            wait_until(lambda: read(browser, "busy") == "0", 30, "busy back to 0")
            assert read(browser, "failed") == "0" and read(browser, "queued") == "0"
            wait_until(lambda: float(read(browser, "rate").replace(",", "") or 0) >= 0, 5, "a rate")
        finally:
            pool.terminate()
        artifacts = Path(os.environ.get("DMP_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(artifacts / "dashboard.png"))


def test_a_public_dashboard_asks_for_the_key_and_opens_with_it(browser: Any, tmp_path: Path) -> None:
    """Bound beyond loopback the page shows a login; the right key opens it, a wrong one does not."""
    from dmp_server.dashboard import Board, Dashboard

    board = Board()
    board.publish({"manager": {"address": "tcp://x:1", "version": "0", "uptime_s": 1}, "slots": 7, "busy": 0,
                   "queued": 0, "totals": {}, "nodes": [], "clients": []})
    # Served on loopback but configured as public: the same code path as 0.0.0.0.
    d = Dashboard("127.0.0.1", 0, board, b"the-right-key", public=True)
    try:
        browser.delete_all_cookies()
        browser.get(d.url)
        wait_until(lambda: browser.find_element("id", "login").is_displayed(), 20, "the login form")
        box = browser.find_element("id", "authkey")
        box.send_keys("a-wrong-key")
        browser.find_element("css selector", "#login button").click()
        wait_until(lambda: read(browser, "login-error"), 20, "the wrong key to be refused")
        box.clear()
        box.send_keys("the-right-key")
        browser.find_element("css selector", "#login button").click()
        wait_until(lambda: read(browser, "slots") == "7", 20, "the page to open with the right key")
    finally:
        d.close()
