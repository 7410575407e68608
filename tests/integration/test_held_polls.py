"""Long polls parked without a task (tarefa.http.held) answer byte for byte as the app does: one
app on a real SQLite file, served by two real uvicorn servers on loopback sockets with tarefa's
protocol — one parking long polls, one sending every request through the app — and the same raw
HTTP requests sent to both, at the same time, on the same jobs."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from api_app import Gates, build_app
from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request

from tarefa import Tarefa
from tarefa.http.held import HeldPolls
from tarefa.http.limits import BodyLimitMiddleware
from tarefa.http.protocol import ReadTimeouts, protocol_class
from tarefa.users import User

pytestmark = pytest.mark.anyio


def identity(request: Request) -> User | None:
    """Basic auth with any password "pw"; "root" is an admin."""
    found = re.fullmatch(r"Basic (\S+)", request.headers.get("authorization", ""))
    if found is None:
        return None
    name, _, password = base64.b64decode(found.group(1)).decode().partition(":")
    return User(name, admin=name == "root") if password == "pw" else None


def basic(name: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:pw".encode()).decode()


class Served:
    """One uvicorn server of the app on a loopback socket."""

    def __init__(self, app: FastAPI, held: HeldPolls | None) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        http = protocol_class(ReadTimeouts(), held)
        config = uvicorn.Config(BodyLimitMiddleware(app), http=http, lifespan="off", log_level="warning",
                                timeout_keep_alive=130)  # fmt: skip
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)

    async def start(self) -> None:
        await self.server.startup(sockets=[self.socket])

    async def stop(self) -> None:
        await self.server.shutdown()

    @property
    def tasks(self) -> int:
        return len(self.server.server_state.tasks)

    async def raw(self, target: str, headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
        """The whole answer to one request on a new connection, without its ``date`` line."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            lines = [f"{method} {target} HTTP/1.1", "host: test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            return await read_answer(reader)
        finally:
            writer.close()
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    body = await reader.readexactly(length)
    return re.sub(rb"date: [^\r]*\r\n", b"", head) + body


class Pair:
    def __init__(self, app: FastAPI, jobs: Tarefa, gates: Gates) -> None:
        self.app, self.jobs, self.gates = app, jobs, gates
        self.held_polls = HeldPolls.of(app)
        assert self.held_polls is not None
        self.parked = Served(app, self.held_polls)
        self.through_app = Served(app, None)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.through_app.port}", timeout=10)

    async def both(self, target: str, headers: dict[str, str] | None = None) -> tuple[bytes, bytes]:
        """The answers of both servers to the same request, sent to both at once."""
        fast, slow = await asyncio.gather(self.parked.raw(target, headers), self.through_app.raw(target, headers))
        return fast, slow

    async def start_job(self, gate: str, user: str | None = None) -> dict[str, Any]:
        headers = {"authorization": basic(user)} if user else {}
        answer = await self.http.post("/api/things", json={"name": gate, "gate": gate}, headers=headers)
        assert answer.status_code == 202, answer.text
        job: dict[str, Any] = answer.json()["job"]
        for _ in range(200):  # until it waits at its gate (a running job with a message)
            record = (await self.http.get(f"/api/jobs/{job['id']}", headers=headers)).json()["record"]
            if record["state"] == "running" and str(record.get("message")).startswith("waiting for gate"):
                return record
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job['id']} did not reach its gate")


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    app, jobs, gates = build_app(f"sqlite:///{tmp_path}/held.db", workers=4)
    served = Pair(app, jobs, gates)
    async with jobs.running():
        await served.parked.start()
        await served.through_app.start()
        try:
            yield served
        finally:
            await served.http.aclose()
            await served.parked.stop()
            await served.through_app.stop()


def poll(job: dict[str, Any], timeout: int = 1, **extra: str) -> str:
    query = f"poll_timeout={timeout}&last_modified={quote(job['last_modified'])}"
    return f"/api/jobs/{job['id']}?{query}" + "".join(f"&{k}={quote(v)}" for k, v in extra.items())


async def test_a_long_poll_that_times_out_answers_as_the_app(pair: Pair) -> None:
    job = await pair.start_job("g1")
    for extra in ({}, {"fields": "state,progress"}, {"fields": "*"}):
        fast, slow = await pair.both(poll(job, **extra), {"request-id": "rid-1"})
        assert fast == slow
        assert fast.startswith(b"HTTP/1.1 200 OK") and b"request-id: rid-1" in fast and b"etag: " in fast
    fast, slow = await pair.both(poll(job))  # no request-id of the client's: each makes one
    assert re.sub(rb"request-id: \w+", b"", fast) == re.sub(rb"request-id: \w+", b"", slow)
    pair.gates.open("g1")


async def test_a_parked_long_poll_keeps_no_task_and_answers_the_change(pair: Pair) -> None:
    job = await pair.start_job("g2")
    answers = asyncio.gather(
        pair.both(poll(job, 30), {"request-id": "rid-2"}),
        pair.both(poll(job, 30, fields="state"), {"request-id": "rid-2b"}),
    )
    await asyncio.sleep(0.3)
    assert pair.parked.tasks == 0 and pair.through_app.tasks == 2  # parked: no task while they wait
    assert pair.jobs.hub.waiting == 4
    metrics = (await pair.http.get("/metrics")).text
    assert "tarefa_long_polls_waiting 4.0" in metrics
    pair.gates.open("g2")
    (fast, slow), (fast_fields, slow_fields) = await asyncio.wait_for(answers, 5)
    assert fast == slow and fast_fields == slow_fields
    assert b'"state":"success"' in fast and b'"state":"success"' in fast_fields
    assert pair.jobs.hub.waiting == 0
    metrics = (await pair.http.get("/metrics")).text
    assert "tarefa_long_polls_waiting 0.0" in metrics
    assert "tarefa_wakeup_seconds_count 4.0" in metrics  # each poll woken by the change, parked or not


async def test_refusals_answer_as_the_app(pair: Pair) -> None:
    job = await pair.start_job("g3")
    cases = [
        f"/api/jobs/nosuchjob?poll_timeout=1&last_modified={quote(job['last_modified'])}",
        "/api/jobs/nosuchjob?poll_timeout=1",
        f"/api/jobs/{job['id']}?poll_timeout=0",  # invalid: through the app's validation, on both
        f"/api/jobs/{job['id']}?poll_timeout=1&poll_timeout=2",
        f"/api/jobs/{job['id']}?poll_timeout=1&last_modified=yesterday",
        f"/api/jobs/{job['id']}?poll_timeout=1&fields=nonsense",
        f"/api/jobs/{job['id']}?poll_timeout=1&last_modified=2000-01-01T00:00:00Z",  # changed since: at once
        f"/api/jobs/{job['id']}?poll_timeout=1&x=%00",  # a control character: BodyLimitMiddleware's 400
    ]
    for target in cases:
        fast, slow = await pair.both(target, {"request-id": "rid-3"})
        assert fast == slow, target
    fast, slow = await pair.both(poll(job), {"request-id": "rid-3", "content-length": "0"})  # a body: the app
    assert fast == slow
    pair.gates.open("g3")


async def test_a_job_deleted_while_parked_answers_404_as_the_app(pair: Pair) -> None:
    job = await pair.start_job("g4")
    pair.gates.open("g4")
    for _ in range(100):
        record = (await pair.http.get(f"/api/jobs/{job['id']}")).json()["record"]
        if record["state"] == "success":
            break
        await asyncio.sleep(0.02)
    # A terminal job answers at once; a deleted one 404 — parked or not.
    fast, slow = await pair.both(poll(job, 5), {"request-id": "rid-4"})
    assert fast == slow and b'"state":"success"' in fast
    assert (await pair.http.delete(f"/api/jobs/{job['id']}")).status_code == 204
    fast, slow = await pair.both(poll(job, 5), {"request-id": "rid-4"})
    assert fast == slow and fast.startswith(b"HTTP/1.1 404")


async def test_access_control_and_the_per_user_limit_answer_as_the_app(pair: Pair) -> None:
    pair.jobs.configure_access(identity=identity, max_waiting_per_user=2)
    job = await pair.start_job("g5", user="ana")
    target = poll(job, 30)
    for headers in ({}, {"authorization": basic("bob")}, {"authorization": "Basic bm9wZQ=="}):
        fast, slow = await pair.both(poll(job), {"request-id": "rid-5", **headers})
        assert fast == slow, headers  # 401 (with WWW-Authenticate) and another user's 404
    ana = {"request-id": "rid-5", "authorization": basic("ana")}
    held = asyncio.gather(pair.parked.raw(target, ana), pair.through_app.raw(target, ana))
    await asyncio.sleep(0.3)
    assert pair.parked.tasks == 0
    fast, slow = await pair.both(target, ana)  # ana holds 2 already: 429 on both
    assert fast == slow and fast.startswith(b"HTTP/1.1 429")
    fast, slow = await pair.both(poll(job), {"request-id": "rid-5", "authorization": basic("root")})
    assert fast == slow and b'"owner":"ana"' in fast  # an admin sees the owner
    pair.gates.open("g5")
    fast, slow = await asyncio.wait_for(held, 5)
    assert fast == slow and b'"state":"success"' in fast
    assert pair.jobs.waiting_limit.open_for("ana") == 0


async def test_a_client_that_goes_away_frees_its_parked_poll(pair: Pair) -> None:
    pair.jobs.configure_access(identity=identity, max_waiting_per_user=1)
    job = await pair.start_job("g6", user="ana")
    _reader, writer = await asyncio.open_connection("127.0.0.1", pair.parked.port)
    writer.write(f"GET {poll(job, 60)} HTTP/1.1\r\nhost: t\r\nauthorization: {basic('ana')}\r\n\r\n".encode())
    await asyncio.sleep(0.3)
    assert pair.jobs.waiting_limit.open_for("ana") == 1 and pair.jobs.hub.waiting == 1
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if pair.jobs.hub.waiting == 0:
            break
        await asyncio.sleep(0.01)
    assert pair.jobs.hub.waiting == 0 and pair.jobs.waiting_limit.open_for("ana") == 0
    pair.gates.open("g6")


async def test_keep_alive_and_pipelining_go_on_after_a_parked_answer(pair: Pair) -> None:
    job = await pair.start_job("g7")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.parked.port)
    request = f"GET {poll(job, 1)} HTTP/1.1\r\nhost: t\r\nrequest-id: rid-7\r\n\r\n"
    plain = f"GET /api/jobs/{job['id']}?fields=state HTTP/1.1\r\nhost: t\r\nrequest-id: rid-7\r\n\r\n"
    writer.write((request + plain).encode())  # a plain read pipelined behind a parked poll
    first = await asyncio.wait_for(read_answer(reader), 5)
    second = await asyncio.wait_for(read_answer(reader), 5)
    assert first == await pair.through_app.raw(poll(job, 1), {"request-id": "rid-7"})
    assert second.startswith(b"HTTP/1.1 200") and b'"state":"running"' in second
    writer.close()
    await writer.wait_closed()
    pair.gates.open("g7")


async def test_shutdown_answers_parked_polls_at_once(pair: Pair) -> None:
    job = await pair.start_job("g8")
    answer = asyncio.ensure_future(pair.parked.raw(poll(job, 60), {"request-id": "rid-8"}))
    await asyncio.sleep(0.3)
    assert pair.jobs.hub.waiting == 1
    started = asyncio.get_running_loop().time()
    pair.jobs.begin_shutdown()
    got = await asyncio.wait_for(answer, 5)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert got.startswith(b"HTTP/1.1 200") and b'"state":"running"' in got
    pair.gates.open("g8")


async def test_only_apps_with_tarefas_own_middleware_park(tmp_path: Path) -> None:
    app, _jobs, _ = build_app(f"sqlite:///{tmp_path}/other.db", workers=0)
    assert HeldPolls.of(app) is not None
    app.add_middleware(GZipMiddleware)
    assert HeldPolls.of(app) is None
    assert HeldPolls.of(FastAPI()) is None


async def test_a_route_in_front_of_the_fast_route_takes_its_requests(pair: Pair) -> None:
    job = await pair.start_job("g9")

    async def mine(request: Request) -> Any:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("the application's own")

    from starlette.routing import Route

    pair.app.router.routes.insert(0, Route("/api/jobs/{job_id}", mine))
    try:
        fast, slow = await pair.both(poll(job), {"request-id": "rid-9"})
        assert fast == slow and fast.endswith(b"the application's own")
    finally:
        del pair.app.router.routes[0]
    pair.gates.open("g9")


async def test_fastapis_telemetry_once_configured_sends_long_polls_through_the_app(pair: Pair) -> None:
    from opentelemetry.trace import NoOpTracerProvider

    job = await pair.start_job("g10")
    telemetry = pair.app._native_telemetry  # type: ignore[attr-defined]
    telemetry.config["tracer_provider"] = NoOpTracerProvider()
    try:
        assert telemetry.enabled()
        answer = asyncio.ensure_future(pair.parked.raw(poll(job, 30), {"request-id": "rid-10"}))
        await asyncio.sleep(0.3)
        assert pair.parked.tasks == 1  # not parked: a task through the app
        pair.gates.open("g10")
        fast = await asyncio.wait_for(answer, 5)
        assert fast.startswith(b"HTTP/1.1 200") and b'"state":"success"' in fast
    finally:
        telemetry.config["tracer_provider"] = None
