"""The asynchronous calls' fast path (issue 11, tarefa.http.asyncpath): a route it takes answers
every request exactly as the same route through FastAPI does. Two routes share one endpoint
body; the second takes a ``Request`` too, which leaves it to FastAPI. Through the app's real
lifespan, on a real SQLite file."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, Field

from tarefa import AsyncCall, JobContext, Tarefa, User, asynchronous
from tarefa.http.asyncpath import _AsyncEndpoint
from tarefa.http.fastpath import FastRoute

pytestmark = pytest.mark.anyio

VARYING = {"id", "create_time", "start_time", "end_time", "last_modified", "_links"}


class Order(BaseModel):
    size: int = Field(ge=1, le=10)
    note: str = ""


def build(store: str) -> FastAPI:
    def identity(request: Request) -> User | None:
        name = request.headers.get("x-user")
        return User(name) if name else None

    jobs = Tarefa(store, identity=identity, workers=2)
    app = FastAPI()
    jobs.mount(app, prefix="/api")

    @jobs.operation("order.make")
    async def make(ctx: JobContext, order: Order) -> dict[str, Any]:
        return {"made": order.size}

    @app.post("/api/fast", **asynchronous())
    async def fast(order: Order, call: AsyncCall) -> Response:
        return await call.start("order.make", order)

    @app.post("/api/slow", **asynchronous())
    async def slow(order: Order, call: AsyncCall, request: Request) -> Response:
        return await call.start("order.make", order)

    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build(f"sqlite:///{tmp_path}/async-path.db")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_the_fast_path_takes_only_the_routes_it_can_answer_alike(tmp_path: Path) -> None:
    app = build(f"sqlite:///{tmp_path}/routes.db")
    assert not [r for r in app.router.routes if isinstance(r, FastRoute) and isinstance(r.fast, _AsyncEndpoint)]
    for _ in range(2):  # a second start installs nothing twice
        async with app.router.lifespan_context(app):
            fast = [r for r in app.router.routes if isinstance(r, FastRoute) and isinstance(r.fast, _AsyncEndpoint)]
            assert [(r.path, r.methods) for r in fast] == [("/api/fast", {"POST"})]


def _shape(response: httpx.Response) -> tuple[int, Any, set[str]]:
    """The answer without what differs between two jobs (ids, times, links)."""
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("job"), dict):
        body = {**body, "job": {k: v for k, v in body["job"].items() if k not in VARYING}}
    names = {name for name in response.headers if name not in ("date", "request-id", "content-length")}
    return response.status_code, body, names


async def _both(client: httpx.AsyncClient, **request: Any) -> tuple[httpx.Response, httpx.Response]:
    params = request.pop("params", {})
    headers = {"x-user": "ana", **request.pop("headers", {})}
    fast = await client.post("/api/fast", params=params, headers=headers, **request)
    slow = await client.post("/api/slow", params=params, headers=headers, **request)
    return fast, slow


JSON = {"content-type": "application/json"}
CASES: dict[str, dict[str, Any]] = {
    "ended within return_timeout": {"json": {"size": 3}, "params": {"return_timeout": "10"}},
    "accepted": {"content": b'{"size": 2, "note": "x"}', "headers": JSON},
    "malformed JSON": {"content": b'{"size": ', "headers": JSON},
    "a body that does not validate": {"json": {"size": 0}, "params": {"return_timeout": "10"}},
    "a body of the wrong type": {"json": [1, 2]},
    "null": {"content": b"null", "headers": JSON},
    "no body": {"headers": JSON},
    "no content type": {"content": b'{"size": 2}'},
    "another content type": {"content": b'{"size": 2}', "headers": {"content-type": "text/plain"}},
    "a JSON subtype": {"content": b'{"size": 2}', "headers": {"content-type": "application/merge-patch+json"}},
    "a malformed return_timeout": {"json": {"size": 1}, "params": {"return_timeout": "soon"}},
    "a return_timeout over the maximum": {"json": {"size": 1}, "params": {"return_timeout": "121"}},
    "not signed in": {"json": {"size": 1}, "headers": {"x-user": ""}},
    "a refused Callback-URL": {"json": {"size": 1}, "headers": {"Callback-URL": "ftp://example.com/x"}},
    "a Callback-URL to a private address": {"json": {"size": 1}, "headers": {"Callback-URL": "http://127.0.0.1/x"}},
    "a malformed Idempotency-Key": {"json": {"size": 1}, "headers": {"Idempotency-Key": ""}},
}


#: The cases the fast path answers itself (every other one goes on to the route).
ANSWERED_FAST = {
    "ended within return_timeout",
    "accepted",
    "a malformed return_timeout",
    "a return_timeout over the maximum",
    "not signed in",
    "a refused Callback-URL",
    "a Callback-URL to a private address",
    "a malformed Idempotency-Key",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_request_is_answered_as_the_route_answers_it(
    client: httpx.AsyncClient, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    declined: list[str] = []
    decline = FastRoute._decline

    async def counted(self: FastRoute, scope: Any, receive: Any, send: Any) -> None:
        declined.append(scope["path"])
        await decline(self, scope, receive, send)

    app = client._transport.app  # type: ignore[attr-defined]  # the app behind the ASGI transport
    for route in app.router.routes:  # each route binds its decline once, when it is made
        if isinstance(route, FastRoute):
            monkeypatch.setattr(route, "_declined", functools.partial(counted, route))
    fast, slow = await _both(client, **CASES[case])
    assert declined == ([] if case in ANSWERED_FAST else ["/api/fast"])
    assert _shape(fast) == _shape(slow), (fast.text, slow.text)
    if fast.status_code in (200, 202):
        job = fast.json()["job"]
        assert fast.headers["location"] == f"/api/jobs/{job['id']}"
        record = (await client.get(fast.headers["location"], headers={"x-user": "ana"})).json()["record"]
        assert record["id"] == job["id"]


async def test_a_job_ended_within_return_timeout_is_the_stored_job(client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/fast", params={"return_timeout": 10}, json={"size": 4}, headers={"x-user": "ana"})
    assert answer.status_code == 200, answer.text
    job = answer.json()["job"]
    assert job["state"] == "success" and job["result"] == {"made": 4}
    stored = await client.get(f"/api/jobs/{job['id']}", headers={"x-user": "ana"})
    assert stored.json()["record"] == job
    assert answer.headers["etag"] == stored.headers["etag"]
    assert "retry-after" not in answer.headers
    other = await client.get(f"/api/jobs/{job['id']}", headers={"x-user": "bea"})
    assert other.status_code == 404


async def test_an_idempotency_key_is_replayed_and_its_reuse_refused_alike(client: httpx.AsyncClient) -> None:
    for path in ("/api/fast", "/api/slow"):
        headers = {"x-user": "ana", "Idempotency-Key": f"key-{path}"}
        first = await client.post(path, json={"size": 5}, headers=headers, params={"return_timeout": 10})
        again = await client.post(path, json={"size": 5}, headers=headers)
        assert first.status_code == 200, first.text
        assert again.status_code == 200 and again.json() == first.json()
        reused = await client.post(path, json={"size": 6}, headers=headers)
        assert reused.status_code == 422, reused.text
        assert reused.json()["error"]["code"] == "idempotency_key_reused"
        assert await _count(client) == (1 if path == "/api/fast" else 2)


async def _count(client: httpx.AsyncClient) -> int:
    listed = await client.get("/api/jobs", headers={"x-user": "ana"}, params={"max_records": 1000})
    return int(listed.json()["num_records"])


def _limited_app(store: str, app_limit: int | None) -> FastAPI:
    jobs = Tarefa(store, workers=1)
    app = FastAPI(max_body_size=app_limit)
    jobs.mount(app, prefix="/api")

    @jobs.operation("order.make")
    async def make(ctx: JobContext, order: Order) -> int:
        return order.size

    @app.post("/api/limited", **asynchronous(max_body_size=32))
    async def limited(order: Order, call: AsyncCall) -> Response:
        return await call.start("order.make", order)

    @app.post("/api/free", **asynchronous())
    async def free(order: Order, call: AsyncCall) -> Response:
        return await call.start("order.make", order)

    return app


@pytest.mark.parametrize(("app_limit", "taken"), [(None, ["/api/free"]), (64, [])])
async def test_fastapis_own_body_limits_leave_the_call_to_fastapi(
    tmp_path: Path, app_limit: int | None, taken: list[str]
) -> None:
    """A body size limit of FastAPI's (the app's or the route's) words its own 413: no fast path."""
    app = _limited_app(f"sqlite:///{tmp_path}/limits.db", app_limit)
    async with app.router.lifespan_context(app):
        fast = [r.path for r in app.router.routes if isinstance(r, FastRoute) and isinstance(r.fast, _AsyncEndpoint)]
        assert fast == taken
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            small = await http.post("/api/free", json={"size": 1}, params={"return_timeout": 10})
            assert small.status_code == 200, small.text
            big = await http.post("/api/limited", json={"size": 1, "note": "x" * 100})
            assert big.status_code == 413, big.text
