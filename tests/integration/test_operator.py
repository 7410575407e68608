"""The operator's surface in process: /metrics against known jobs, GET /api/changes, and /readyz
across a PostgreSQL outage (a TCP forwarder of our own between the store and the server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from api_app import Gates, build_app
from prometheus_client.parser import text_string_to_metric_families

from tarefa import Tarefa

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def serving(store: str, **options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Tarefa, Gates]]:
    app, tarefa, gates = build_app(store, **options)
    async with tarefa.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, tarefa, gates


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


async def terminal(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    record: dict[str, Any] = (await client.get(f"/api/jobs/{job_id}")).json()["record"]
    while record["state"] not in ("success", "failure"):
        params = {"poll_timeout": 5, "last_modified": record["last_modified"]}
        record = (await client.get(f"/api/jobs/{job_id}", params=params)).json()["record"]
    return record


async def test_metrics_count_known_jobs(tmp_path: Path) -> None:
    async with serving(f"sqlite:///{tmp_path}/m.db") as (client, tarefa, gates):
        tarefa.metrics.cache_seconds = 0.0
        done = [(await client.post("/api/things", json={"steps": 2})).json()["job"]["id"] for _ in range(3)]
        failed = (await client.post("/api/things", json={"fail": "nope"})).json()["job"]["id"]
        held = (await client.post("/api/things", json={"gate": "g"})).json()["job"]["id"]
        for job_id in [*done, failed]:
            await terminal(client, job_id)
        record = (await client.get(f"/api/jobs/{held}")).json()["record"]
        while record["message"] != "waiting for gate g":  # else the poll below would answer that change
            params = {"poll_timeout": 5, "last_modified": record["last_modified"]}
            record = (await client.get(f"/api/jobs/{held}", params=params)).json()["record"]
        waiting = asyncio.create_task(client.get(f"/api/jobs/{held}", params={"poll_timeout": 30}))
        while tarefa.hub.waiting == 0:
            await asyncio.sleep(0.01)
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(response.text)
        assert value(found, "tarefa_jobs", state="success", operation="thing.make") == 3
        assert value(found, "tarefa_jobs", state="failure", operation="thing.make") == 1
        assert value(found, "tarefa_jobs", state="running", operation="thing.make") == 1
        assert value(found, "tarefa_job_duration_seconds_count", operation="thing.make", state="success") == 3
        assert value(found, "tarefa_job_duration_seconds_count", operation="thing.make", state="failure") == 1
        assert value(found, "tarefa_job_queue_seconds_count", operation="thing.make") == 5
        assert value(found, "tarefa_long_polls_waiting") == 1
        assert value(found, "tarefa_event_streams_open") == 0
        assert value(found, "tarefa_jobs_recovered_total", outcome="worker_lost") == 0
        assert value(found, "tarefa_callbacks_total", outcome="delivered") == 0
        woken = value(found, "tarefa_wakeup_seconds_count")
        gates.open("g")  # the job ends: the long poll answers, and that wake-up is measured
        assert (await waiting).json()["record"]["state"] in ("running", "success")
        found = samples((await client.get("/metrics")).text)
        assert value(found, "tarefa_wakeup_seconds_count") == woken + 1
        assert value(found, "tarefa_wakeup_seconds_sum") < 5
        assert value(found, "tarefa_long_polls_waiting") == 0


async def test_a_scrape_reads_the_store_once_per_cache_period(tmp_path: Path) -> None:
    async with serving(f"sqlite:///{tmp_path}/c.db") as (client, tarefa, _):
        calls = 0
        count_jobs = tarefa.store.count_jobs

        async def counted() -> dict[tuple[str, str], int]:
            nonlocal calls
            calls += 1
            return await count_jobs()

        tarefa.store.count_jobs = counted  # type: ignore[method-assign]
        await asyncio.gather(*(client.get("/metrics") for _ in range(5)))
        await client.post("/api/things", json={})
        text = (await client.get("/metrics")).text
        assert calls == 1
        assert "tarefa_jobs{" not in text  # the new job shows after the cache period, not before


async def test_changes_answers_at_the_next_change_the_viewer_may_see(tmp_path: Path) -> None:
    async with serving(f"sqlite:///{tmp_path}/ch.db") as (client, _, _):
        first = (await client.get("/api/changes")).json()["token"]
        started = time.monotonic()
        idle = (await client.get("/api/changes", params={"after": first, "poll_timeout": 1})).json()["token"]
        assert idle == first
        assert time.monotonic() - started >= 0.9
        waiting = asyncio.create_task(client.get("/api/changes", params={"after": first, "poll_timeout": 30}))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await client.post("/api/things", json={})
        changed = (await asyncio.wait_for(waiting, 5)).json()["token"]
        assert changed != first
        other_process = (await client.get("/api/changes", params={"after": "beef.1", "poll_timeout": 30})).json()
        assert other_process["token"] != "beef.1"  # a token of another process answers at once
        bad = await client.get("/api/changes", params={"poll_timeout": 121})
        assert bad.status_code == 400
        assert bad.json()["error"]["target"] == "poll_timeout"


class Forwarder:
    """A TCP forwarder to PostgreSQL that the test can cut (every connection dropped) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


async def wait_for_status(client: httpx.AsyncClient, status: int, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


@pytest.mark.postgres
async def test_readyz_follows_the_store_across_an_outage(postgres_url: str) -> None:
    target = urlsplit(postgres_url)
    forwarder = Forwarder(target.port or 5432)
    await forwarder.open()
    url = target._replace(netloc=f"{target.username}@127.0.0.1:{forwarder.port}").geturl()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(forwarder.cut)
        client, _, _ = await stack.enter_async_context(serving(f"{url}?pool_timeout=2", workers=0))
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        await forwarder.cut()
        down = await wait_for_status(client, 503)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "not_ready"
        assert down.json()["error"]["message"]
        assert (await client.get("/healthz")).status_code == 200  # the process still runs
        await forwarder.open()
        up = await wait_for_status(client, 200)
        assert up.status_code == 200, up.text
