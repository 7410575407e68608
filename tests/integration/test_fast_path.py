"""The job routes' fast path (tarefa.http.fastpath) answers exactly as the FastAPI routes behind
it: the same requests, good and bad, sent with the fast routes in place and taken out, on a real
SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_app import build_app

from tarefa import Tarefa
from tarefa.http.fastpath import FastRoute

pytestmark = pytest.mark.anyio
SAME_HEADERS = ("content-type", "cache-control", "etag", "retry-after", "allow", "www-authenticate")


class Both:
    """One app; :meth:`send` answers a request through the fast path and through the route."""

    def __init__(self, app: Any, client: httpx.AsyncClient, jobs: Tarefa) -> None:
        self.app, self.client, self.jobs = app, client, jobs
        self.fast = [route for route in app.router.routes if isinstance(route, FastRoute)]

    async def send(self, method: str, path: str, **options: Any) -> tuple[httpx.Response, httpx.Response]:
        fast = await self.client.request(method, path, **options)
        routes = self.app.router.routes
        routes[:] = [route for route in routes if not isinstance(route, FastRoute)]
        try:
            slow = await self.client.request(method, path, **options)
        finally:
            routes[0:0] = self.fast
        return fast, slow


@pytest.fixture
async def both(tmp_path: Path) -> AsyncIterator[Both]:
    app, jobs, _ = build_app(f"sqlite:///{tmp_path}/fast.db", workers=0)
    async with jobs.running():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield Both(app, client, jobs)


def assert_same(fast: httpx.Response, slow: httpx.Response) -> None:
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.content == slow.content
    for name in SAME_HEADERS:
        assert fast.headers.get(name) == slow.headers.get(name), name
    assert fast.headers["request-id"] and slow.headers["request-id"]


async def test_the_fast_routes_are_in_front_of_the_job_routes(both: Both) -> None:
    assert {(route.path, *route.methods) for route in both.fast} == {
        ("/api/jobs/{job_id}", "GET"),
        ("/api/jobs/{job_id}", "PATCH"),
        ("/api/jobs/{job_id}", "DELETE"),
    }
    assert "/api/jobs/{job_id}" in (await both.client.get("/openapi.json")).json()["paths"]


READS: list[dict[str, str] | list[tuple[str, str]]] = [
    {},
    {"fields": "state"},
    {"fields": "*"},
    {"fields": "id,nonsense"},
    {"fields": ""},
    {"poll_timeout": "1"},
    {"poll_timeout": "1", "last_modified": "2000-01-01T00:00:00Z"},
    {"poll_timeout": "1", "last_modified": ">=2000-01-01T00:00:00.5+01:00"},
    {"poll_timeout": "0"},
    {"poll_timeout": "121"},
    {"poll_timeout": "007"},
    {"poll_timeout": "1.5"},
    {"poll_timeout": ""},
    {"poll_timeout": "٣"},
    {"last_modified": "yesterday"},
    {"poll_timeout": "1", "last_modified": "2026-02-30T00:00:00Z"},
    [("poll_timeout", "1"), ("poll_timeout", "200")],
    [("fields", "state"), ("fields", "id")],
    {"unknown": "ignored"},
]


@pytest.mark.parametrize("params", READS)
async def test_reads_answer_as_the_route_does(both: Both, params: Any) -> None:
    job = (await both.client.post("/api/things", json={})).json()["job"]
    fast, slow = await both.send("GET", f"/api/jobs/{job['id']}", params=params)
    assert_same(fast, slow)


@pytest.mark.parametrize("job_id", ["no-such-job", "x" * 300, "%00", "caf%C3%A9"])
async def test_unknown_jobs_answer_as_the_route_does(both: Both, job_id: str) -> None:
    for method, params in [("GET", {}), ("GET", {"poll_timeout": "1"}), ("PATCH", {"action": "cancel"}),
                           ("DELETE", {})]:  # fmt: skip
        fast, slow = await both.send(method, f"/api/jobs/{job_id}", params=params)
        assert_same(fast, slow)


async def test_a_long_poll_answers_the_change(both: Both) -> None:
    job = (await both.client.post("/api/things", json={})).json()["job"]
    params = {"poll_timeout": "5", "last_modified": job["last_modified"]}
    poll = asyncio.ensure_future(both.client.get(f"/api/jobs/{job['id']}", params=params))
    await asyncio.sleep(0.1)
    assert not poll.done()
    cancelled = await both.client.patch(f"/api/jobs/{job['id']}", params={"action": "cancel"})
    answer = await asyncio.wait_for(poll, 5)
    assert answer.status_code == 200 and answer.json()["record"] == cancelled.json()["job"]
    assert answer.headers["etag"] == cancelled.headers["etag"] and "retry-after" not in answer.headers


@pytest.mark.parametrize("params", [{"action": "cancel"}, {"action": "stop"}, {}, [("action", "cancel")] * 2])
async def test_cancel_answers_as_the_route_does(both: Both, params: Any) -> None:
    one = (await both.client.post("/api/things", json={})).json()["job"]
    two = (await both.client.post("/api/things", json={})).json()["job"]
    fast = await both.client.patch(f"/api/jobs/{one['id']}", params=params)
    routes = both.app.router.routes
    routes[:] = [route for route in routes if not isinstance(route, FastRoute)]
    try:
        slow = await both.client.patch(f"/api/jobs/{two['id']}", params=params)
    finally:
        routes[0:0] = both.fast
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    if fast.status_code != 202:
        assert fast.content == slow.content
        return
    assert fast.json()["job"]["state"] == slow.json()["job"]["state"] == "failure"
    # a second cancel of the ended job: 409, both ways
    again_fast, again_slow = await both.send("PATCH", f"/api/jobs/{one['id']}", params={"action": "cancel"})
    assert again_fast.status_code == 409
    assert_same(again_fast, again_slow)


async def test_delete_answers_as_the_route_does(both: Both) -> None:
    queued = (await both.client.post("/api/things", json={})).json()["job"]
    fast, slow = await both.send("DELETE", f"/api/jobs/{queued['id']}")
    assert fast.status_code == 409
    assert_same(fast, slow)
    await both.client.patch(f"/api/jobs/{queued['id']}", params={"action": "cancel"})
    fast = await both.client.delete(f"/api/jobs/{queued['id']}")
    assert fast.status_code == 204 and fast.content == b"" and fast.headers["request-id"]
    fast, slow = await both.send("DELETE", f"/api/jobs/{queued['id']}")
    assert fast.status_code == 404
    assert_same(fast, slow)


async def test_other_methods_keep_the_routes_405(both: Both) -> None:
    job = (await both.client.post("/api/things", json={})).json()["job"]
    fast, slow = await both.send("PUT", f"/api/jobs/{job['id']}")
    assert fast.status_code == 405
    assert_same(fast, slow)
