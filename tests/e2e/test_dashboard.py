"""The dashboard in a real browser: the system's headless Chromium, driven by Playwright.

Chromium is not downloaded by Playwright (no network): the test uses the one on ``PATH``
(``apt-get install -y chromium``; ``.ci/run`` installs it) and fails, with that advice, without it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, Request, sync_playwright

from conftest import ServerProcess

#: The screenshot in the docs: rewritten only when asked (``TAREFA_UPDATE_SCREENSHOT=1``), so that a
#: test run leaves the checkout as it was.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions",
]  # fmt: skip


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("the dashboard tests need Chromium on PATH: apt-get install -y chromium (CI: .ci/run installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watched:
    """A page of the dashboard and every URL it asked for."""

    def __init__(self, browser: Browser, server: ServerProcess) -> None:
        self.server = server
        self.page: Page = browser.new_page(viewport={"width": 1280, "height": 720})
        self.urls: list[str] = []
        self.page.on("request", self._record)
        self.page.on("dialog", self._accept)
        self.dialogs: list[str] = []

    def _record(self, request: Request) -> None:
        self.urls.append(request.url)

    def _accept(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def state_of(self, job_id: str) -> str | None:
        value = self.page.get_attribute(f'tr[data-job="{job_id}"] [data-state]', "data-state", timeout=2000)
        return value

    def outside(self) -> list[str]:
        own = f"{self.server.url}/"
        return [url for url in self.urls if not (url.startswith(own) or url.startswith("data:"))]


def submit(server: ServerProcess, name: str, address: str = "10.0.0.1", http: httpx.Client | None = None) -> str:
    post = httpx.post if http is None else http.post
    response = post(f"{server.url}/api/hosts", json={"name": name, "address": address})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job"]["id"]
    return job_id


@pytest.fixture
def dashboard_server(start_server: Any) -> ServerProcess:
    server: ServerProcess = start_server(step_delay=1.0)
    return server


def test_the_list_follows_a_job_live(browser: Browser, dashboard_server: ServerProcess, tmp_path: Path) -> None:
    watched = Watched(browser, dashboard_server)
    page = watched.page
    page.goto(f"{dashboard_server.url}/")
    page.wait_for_selector("#jobs")
    with httpx.Client() as http:  # made before the clock starts: its TLS setup is no part of the page's time
        started = time.monotonic()
        job_id = submit(dashboard_server, "esx-01", http=http)
    page.wait_for_selector(f'tr[data-job="{job_id}"]', timeout=5000)
    appeared = time.monotonic() - started
    assert appeared < 1.0, f"the job appeared after {appeared:.2f} s"
    progress: list[str] = []
    deadline = time.monotonic() + 15
    while watched.state_of(job_id) != "success":
        assert time.monotonic() < deadline, progress
        value = page.get_attribute(f'tr[data-job="{job_id}"] [data-progress]', "data-progress")
        if value and (not progress or progress[-1] != value):
            progress.append(value)
        time.sleep(0.05)
    assert len(set(progress)) >= 2, progress  # the bar moved while the job ran
    record = httpx.get(f"{dashboard_server.url}/api/jobs/{job_id}").json()["record"]
    assert page.inner_text(f'tr[data-job="{job_id}"] .message') == record["message"]
    failing = submit(dashboard_server, "esx-02", "192.0.2.9")
    page.wait_for_function(
        f"document.querySelector('tr[data-job=\"{failing}\"] [data-state]')?.dataset.state === 'failure'",
        timeout=15000,
    )
    page.select_option("#filter-state", "failure")
    page.wait_for_function("[...document.querySelectorAll('#jobs tbody tr')].length === 1", timeout=5000)
    assert page.get_attribute("#jobs tbody tr", "data-job") == failing
    page.select_option("#filter-state", "")
    page.wait_for_selector(f'tr[data-job="{job_id}"]')
    submit(dashboard_server, "esx-03")
    page.wait_for_function("document.querySelector('#jobs [data-state=running]') !== null", timeout=5000)
    screenshot = DOCS_SCREENSHOT if os.environ.get("TAREFA_UPDATE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000  # a picture of the page, not an empty one
    assert page.get_attribute("nav a:last-child", "href") == "/docs"
    assert watched.outside() == []
    page.close()


def test_a_job_page_shows_history_and_cancels_and_deletes(browser: Browser, dashboard_server: ServerProcess) -> None:
    watched = Watched(browser, dashboard_server)
    page = watched.page
    done = submit(dashboard_server, "esx-10")
    page.goto(f"{dashboard_server.url}/#/jobs/{done}")
    page.wait_for_selector("#result", timeout=15000)  # it ended while we watched, without a reload
    assert '"name": "esx-10"' in page.inner_text("#result")
    states = page.eval_on_selector_all("#events tbody [data-state]", "nodes => nodes.map(n => n.dataset.state)")
    assert states[0] == "queued" and states[-1] == "success" and "running" in states
    assert len(states) >= 5  # created, started, three reports, ended
    running = submit(dashboard_server, "esx-11")
    page.goto(f"{dashboard_server.url}/#/jobs/{running}")
    page.click("#cancel")
    page.wait_for_selector("#error", timeout=10000)
    assert page.inner_text("#error").startswith("cancelled:")
    assert watched.dialogs == [f"Cancel job {running}?"]
    assert httpx.get(f"{dashboard_server.url}/api/jobs/{running}").json()["record"]["error"]["code"] == "cancelled"
    page.click("#delete")
    page.wait_for_selector("#jobs", timeout=5000)
    assert httpx.get(f"{dashboard_server.url}/api/jobs/{running}").status_code == 404
    assert page.query_selector(f'tr[data-job="{running}"]') is None
    assert watched.dialogs[-1] == f"Delete job {running}?"
    assert watched.outside() == []
    page.close()
