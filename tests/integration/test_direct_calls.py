"""Asynchronous calls past the app's middleware stack (issue 11, tarefa.http.held): a server whose
protocol takes them answers every request as a server that sends it through every layer of the
app. One app on a real SQLite file, with its real lifespan, served by two real uvicorn servers on
loopback sockets with tarefa's protocol; the same requests sent to both. The app's middleware
stack counts the requests that enter it, which tells the two ways apart."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from test_async_path import ANSWERED_FAST, CASES, Order, _shape

from tarefa import ApiError, AsyncCall, JobContext, Tarefa, User, asynchronous
from tarefa.http.held import HeldPolls
from tarefa.http.limits import BodyLimitMiddleware
from tarefa.http.protocol import ReadTimeouts, protocol_class

pytestmark = pytest.mark.anyio

MAX_BODY = 4096


class Counted:
    """The app's middleware stack, counting the requests that enter it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.entered += 1
        await self.app(scope, receive, send)


def build(store: str) -> tuple[FastAPI, Tarefa, asyncio.Event]:
    def identity(request: Request) -> User | None:
        name = request.headers.get("x-user")
        return User(name) if name else None

    jobs = Tarefa(store, identity=identity, workers=2)
    app = FastAPI()
    release = asyncio.Event()  # a job whose note is "hold" runs until it is set
    jobs.mount(app, prefix="/api")

    @jobs.operation("order.make")
    async def make(ctx: JobContext, order: Order) -> dict[str, Any]:
        if order.note == "hold":
            await release.wait()
        return {"made": order.size}

    @app.post("/api/fast", **asynchronous())
    async def fast(order: Order, call: AsyncCall) -> Response:
        if order.note == "refuse":
            raise ApiError(409, "order_refused", "that order is refused", target="note")
        if order.note == "bug":
            raise RuntimeError("a bug in the endpoint")
        return await call.start("order.make", order, resource_key=order.note or None)

    return app, jobs, release


class Served:
    """One uvicorn server of the app on a loopback socket."""

    def __init__(self, app: FastAPI, held: HeldPolls | None) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        http = protocol_class(ReadTimeouts(), held)
        config = uvicorn.Config(BodyLimitMiddleware(app, MAX_BODY), http=http, lifespan="off", log_level="warning")
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    async def start(self) -> None:
        await self.server.startup(sockets=[self.socket])


class Pair:
    def __init__(self, app: FastAPI, jobs: Tarefa, release: asyncio.Event) -> None:
        self.app, self.jobs, self.release = app, jobs, release
        held = HeldPolls.of(app, MAX_BODY)
        assert held is not None
        self.direct = Served(app, held)
        self.through = Served(app, None)
        self.stack = Counted(app.build_middleware_stack())
        app.middleware_stack = self.stack  # type: ignore[assignment]

    async def both(self, method: str = "POST", path: str = "/api/fast", **request: Any) -> tuple[Answer, Answer]:
        """The answers of the direct server and of the one through the app, in that order."""
        request["headers"] = {"x-user": "ana", "request-id": "rid-1", **request.get("headers", {})}
        answers = []
        for served in (self.direct, self.through):
            before = self.stack.entered
            async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
                response = await http.request(method, path, **request)
            answers.append(Answer(response, self.stack.entered - before))
        return answers[0], answers[1]


class Chunks:
    """A chunked body that can be sent more than once (a new generator each time)."""

    def __init__(self, make: Callable[[], AsyncIterator[bytes]]) -> None:
        self.make = make

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.make()


class Answer:
    def __init__(self, response: httpx.Response, entered: int) -> None:
        self.response = response
        self.entered = entered  # requests that went through the app's middleware stack

    @property
    def shape(self) -> tuple[int, Any, set[str]]:
        return _shape(self.response)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    app, jobs, release = build(f"sqlite:///{tmp_path}/direct.db")
    async with app.router.lifespan_context(app):  # installs the fast routes, starts the engine
        served = Pair(app, jobs, release)
        await served.direct.start()
        await served.through.start()
        try:
            yield served
        finally:
            for server in (served.direct, served.through):
                await server.server.shutdown()


@pytest.mark.parametrize("case", list(CASES))
async def test_each_call_is_answered_as_through_the_app(pair: Pair, case: str) -> None:
    direct, through = await pair.both(**CASES[case])
    assert direct.shape == through.shape, (direct.response.text, through.response.text)
    assert direct.response.headers["request-id"] == through.response.headers["request-id"] == "rid-1"
    assert through.entered == 1
    # Declined by the fast route (no body, another type, one that does not validate): on through
    # every layer of the app, as the route's own validation words the answer.
    assert direct.entered == (0 if case in ANSWERED_FAST else 1)


async def test_refusals_faults_and_replays_answer_as_through_the_app(pair: Pair) -> None:
    refused, through = await pair.both(json={"size": 1, "note": "refuse"})
    assert refused.shape == through.shape and refused.response.status_code == 409
    assert refused.entered == 0
    bug, through = await pair.both(json={"size": 1, "note": "bug"})
    assert bug.response.status_code == 500 and bug.shape == through.shape and bug.entered == 0
    assert bug.response.json()["error"]["code"] == "internal_error"
    assert "rid-1" in bug.response.json()["error"]["message"]
    headers = {"Idempotency-Key": "k-1"}
    async with httpx.AsyncClient(base_url=pair.through.url) as http:
        first = await http.post("/api/fast", json={"size": 2}, headers={"x-user": "ana", **headers},
                                params={"return_timeout": 10})  # fmt: skip
    assert first.status_code == 200, first.text
    replay, again = await pair.both(json={"size": 2}, headers=headers)
    assert replay.response.status_code == again.response.status_code == 200
    assert replay.response.json() == again.response.json() == first.json() and replay.entered == 0
    reused, through = await pair.both(json={"size": 3}, headers=headers)
    assert reused.response.status_code == 422 and reused.shape == through.shape and reused.entered == 0


async def test_a_busy_resource_key_is_refused_alike(pair: Pair) -> None:
    async with httpx.AsyncClient(base_url=pair.direct.url) as http:
        started = await http.post("/api/fast", json={"size": 1, "note": "hold"}, headers={"x-user": "ana"})
    assert started.status_code == 202, started.text
    busy, through = await pair.both(json={"size": 1, "note": "hold"})
    assert busy.response.status_code == 409 and busy.shape == through.shape and busy.entered == 0
    assert busy.response.json()["error"]["job"]["id"] == started.json()["job"]["id"]
    pair.release.set()


async def test_bodies_the_limit_must_count_go_through_the_app(pair: Pair) -> None:
    big = {"size": 1, "note": "x" * (MAX_BODY + 10)}
    direct, through = await pair.both(json=big)
    assert direct.response.status_code == through.response.status_code == 413
    assert direct.shape == through.shape and direct.entered == through.entered == 0  # refused before the app

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"size": 2}'

    direct, through = await pair.both(content=Chunks(chunks), headers={"content-type": "application/json"})
    assert direct.response.status_code == through.response.status_code == 202
    assert direct.shape == through.shape and direct.entered == 1  # chunked: counted by the app's layers
    direct, through = await pair.both(path="/api/fast?x=%00", json={"size": 1})
    assert direct.response.status_code == 400 and direct.shape == through.shape


async def test_only_apps_without_a_body_limit_of_fastapis_take_calls(tmp_path: Path) -> None:
    app, _jobs, _ = build(f"sqlite:///{tmp_path}/one.db")
    held = HeldPolls.of(app)
    assert held is not None
    limited = FastAPI(max_body_size=64)
    Tarefa(f"sqlite:///{tmp_path}/two.db", workers=0).mount(limited, prefix="/api")
    other = HeldPolls.of(limited)
    assert other is not None  # long polls are parked still; calls go through FastAPI's limit
    scope = {"type": "http", "method": "POST", "path": "/api/fast", "query_string": b"", "headers": []}
    assert other.direct(scope, limited) is None
