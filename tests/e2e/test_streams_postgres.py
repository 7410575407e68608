"""Every job's event stream on PostgreSQL, where concurrent transactions commit out of ``seq`` order
(SPEC §10): three ``tarefa serve`` processes with workers share one real database and write events
at once; a reader that resumes again and again with ``Last-Event-ID`` on one process, and a reader
that never drops its stream on another, each get every stored event exactly once, in ``seq`` order.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from pg_database import postgres_database
from sse import all_event_pages, frames, read_events, stream_headers

from conftest import ServerProcess

pytestmark = pytest.mark.postgres
JOBS_PER_SERVER = 40


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database("tarefa_streams") as url:
        yield url


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAREFA_STREAM_HEARTBEAT", "0.2")


def _resuming_reader(base: str, stop: threading.Event, got: list[dict[str, Any]]) -> None:
    """Reads a few events per connection, then reconnects with the last id, until told to stop
    and a connection stays quiet for a second."""
    rng = random.Random(7)
    last: int | None = None
    with httpx.Client(timeout=30) as client:
        while True:
            records = read_events(client, f"{base}/api/events", last_event_id=last, count=rng.randint(1, 25), idle=1.0)
            got.extend(records)
            if records:
                last = records[-1]["seq"]
            elif stop.is_set():
                return


def _live_reader(base: str, stop: threading.Event, got: list[dict[str, Any]]) -> None:
    """One stream for the whole run, read until told to stop and quiet for a second."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{base}/api/events", headers=stream_headers()) as response,
    ):
        quiet_since = time.monotonic()
        for frame in frames(response):
            if not frame.comment:
                got.append(frame.record)
                quiet_since = time.monotonic()
            elif stop.is_set() and time.monotonic() - quiet_since > 1.0:
                return


def test_concurrent_writers_in_several_processes_and_resumed_streams_get_every_event_once(
    start_server: Any, database: str
) -> None:
    servers: list[ServerProcess] = [start_server("--workers", "3", step_delay=0.0, store=database) for _ in range(3)]
    stop = threading.Event()
    resumed: list[dict[str, Any]] = []
    live: list[dict[str, Any]] = []
    readers = [
        threading.Thread(target=_resuming_reader, args=(servers[0].url, stop, resumed)),
        threading.Thread(target=_live_reader, args=(servers[1].url, stop, live)),
    ]
    for reader in readers:
        reader.start()
    time.sleep(0.5)

    def register(n: int) -> str:
        """As a client does: a 503 (the store busy under this load) is repeated with the same key."""
        server = servers[n % len(servers)]
        for _ in range(20):
            answer = httpx.post(
                f"{server.url}/api/hosts",
                json={"name": f"h{n}", "address": "10.0.0.1"},
                headers={"Idempotency-Key": f"register-{n}"},
                timeout=30,
            )
            if answer.status_code != 503:
                break
            time.sleep(float(answer.headers.get("Retry-After", "1")))
        assert answer.status_code == 202, (answer.text, server.log()[-3000:])
        return str(answer.json()["job"]["id"])

    try:
        with ThreadPoolExecutor(12) as pool:
            job_ids = list(pool.map(register, range(JOBS_PER_SERVER * len(servers))))
    except BaseException:
        stop.set()  # the readers end before the servers do
        raise
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=30) as client:
        while any(r["state"] not in ("success", "failure") for r in _jobs(client, servers[2].url)):
            assert time.monotonic() < deadline, "the jobs did not end"
            time.sleep(0.2)
        stop.set()
        for reader in readers:
            reader.join(60)
            assert not reader.is_alive()
        stored = all_event_pages(client, servers[2].url)
    assert len(stored) >= 4 * len(job_ids) and {r["job_id"] for r in stored} == set(job_ids)
    for name, got in (("resumed", resumed), ("live", live)):
        seqs = [r["seq"] for r in got]
        assert len(seqs) == len(set(seqs)), f"{name}: an event came twice"
        assert seqs == sorted(seqs), f"{name}: out of seq order"
        missed = sorted({r["seq"] for r in stored} - set(seqs))
        assert got == stored, f"{name}: missed {missed}"
    for server in servers:
        assert "Traceback" not in server.log()


def _jobs(client: httpx.Client, base: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    href: str | None = "/api/jobs?max_records=1000"
    while href is not None:
        body = client.get(base + href).json()
        records += body["records"]
        href = body["_links"].get("next", {}).get("href")
    return records
