"""A browser's ``EventSource`` on a job's event stream (SPEC §10), in the system's headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright
from test_dashboard import CHROMIUM_ARGS, chromium_path

from conftest import ServerProcess

FOLLOW = """
([url]) => new Promise((resolve) => {
  const got = [];
  const source = new EventSource(url);
  source.addEventListener("job", (e) => got.push({id: e.lastEventId, data: JSON.parse(e.data)}));
  source.onerror = () => {
    // the server ended the stream after the terminal event; the browser reconnected with
    // Last-Event-ID and was answered 204, which closes the EventSource for good
    if (source.readyState === EventSource.CLOSED) resolve({got, state: source.readyState});
  };
  setTimeout(() => { source.close(); resolve({got, state: "timeout"}); }, 20000);
})
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_an_event_source_in_chromium_gets_a_jobs_events_in_order_and_stops_at_the_end(
    browser: Browser, start_server: Any
) -> None:
    server: ServerProcess = start_server(step_delay=0.3)
    answer = httpx.post(f"{server.url}/api/hosts", json={"name": "web1", "address": "10.0.0.1"}, timeout=10)
    job_id = answer.json()["job"]["id"]
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        seen = page.evaluate(FOLLOW, [f"/api/jobs/{job_id}/events"])
    finally:
        page.close()
    assert seen["state"] == 2, seen
    history = httpx.get(f"{server.url}/api/jobs/{job_id}/events", timeout=10).json()["records"]
    assert [event["data"] for event in seen["got"]] == history
    assert [event["id"] for event in seen["got"]] == [str(record["seq"]) for record in history]
    assert history[0]["state"] == "queued" and history[-1]["state"] == "success" and len(history) >= 4
