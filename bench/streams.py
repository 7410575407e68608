"""Issue 10 figures: event streams (SPEC §10) — delivery latency with many streams open, and the
server memory each open stream costs.

    python bench/streams.py [--streams 1000] [--events 1000] [--tick 0.05] [--clients 4] [--postgres]

Serves ``bench.apps:app`` with ``tarefa serve --workers 4`` on a fresh SQLite file (or, with
``--postgres``, a fresh database on ``$TAREFA_TEST_POSTGRES``). Then:

1. memory: the server's RSS and PSS (``/proc/<pid>/smaps_rollup``) after a warm-up stream has
   been opened and closed, and again with ``--streams`` streams of ``GET /api/events`` open and
   idle; the difference divided by the number of streams;
2. latency: one ``ticker`` job makes ``--events`` visible changes, one every ``--tick`` seconds;
   every open stream shows every one of them. For each event on each stream: the time it was
   read by the client minus the event's ``time`` (the job's ``last_modified``, set just before
   the commit, on the same clock) — p50/p99 over every delivery, and over the first stream only.
   Baseline in the same run: the same job followed by one long-polling client (no stream open).

The ``--clients`` client processes each hold ``streams / clients`` connections (plain asyncio
sockets; a line reader, only the ``data:`` lines are parsed) so that the client is not the one
thing measured. Clients and server share the machine's cores. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"tarefa_bench_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query="").geturl()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def server(store: str | None, tick: float) -> Iterator[tuple[str, int]]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tarefa-bench-streams-")
    command = [sys.executable, "-m", "tarefa", "serve", "--port", str(port), "--app", "bench.apps:app",
               "--workers", "4", "--store", store or f"sqlite:///{workdir}/bench.db"]  # fmt: skip
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # e.g. an older src
    env = {**os.environ, "PYTHONPATH": path, "BENCH_TICK_SECONDS": str(tick)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(f"{url}/api/jobs", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


def memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS of the process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            found[name.lower()] = int(rest.split()[0])
    return found


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the client processes ------------------------------------------------------------------------------


async def _one_stream(port: int, after: int, opened: asyncio.Event, out: list[float], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(
        f"GET /api/events?after={after} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    assert b" 200 " in status, status
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    opened.set()
    marker = b'"time":"'
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                received = time.time()
                start = line.index(marker) + len(marker)
                out.append(received - parse_time(line[start : line.index(b'"', start)].decode()))
    finally:
        writer.close()


async def _client(port: int, after: int, streams: int, events: int, ready: Any, go: Any, results: Any) -> None:
    stop = asyncio.Event()
    outs: list[list[float]] = [[] for _ in range(streams)]
    flags = [asyncio.Event() for _ in range(streams)]
    tasks = []
    for i in range(streams):
        tasks.append(asyncio.create_task(_one_stream(port, after, flags[i], outs[i], stop)))
        await flags[i].wait()
    ready.put(streams)
    while not go.is_set():
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + events * 0.5 + 120
    while any(len(out) < events for out in outs) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.put(outs)


def client_process(port: int, after: int, streams: int, events: int, ready: Any, go: Any, results: Any) -> None:
    asyncio.run(_client(port, after, streams, events, ready, go, results))


# -- the figures ---------------------------------------------------------------------------------------


def latest_seq(url: str) -> int:
    page = httpx.get(f"{url}/api/events", params={"max_records": "1000"}, timeout=30).json()
    after = 0
    while True:
        if page["records"]:
            after = page["records"][-1]["seq"]
        nxt = page["_links"].get("next")
        if not nxt:
            return after
        page = httpx.get(url + nxt["href"], timeout=30).json()


def long_poll_baseline(url: str, events: int) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=130) as client:
        job = client.post("/api/ticker", params={"count": events}).json()["job"]
        latencies: list[float] = []
        last = job["last_modified"]
        while True:
            response = client.get(f"/api/jobs/{job['id']}", params={"poll_timeout": 30, "last_modified": last})
            received = time.time()
            record = response.json()["record"]
            if record["message"].startswith("tick"):
                latencies.append(received - parse_time(record["last_modified"]))
            last = record["last_modified"]
            if record["state"] in ("success", "failure"):
                break
    return {"changes": len(latencies), "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000}  # fmt: skip


def measure(url: str, pid: int, options: argparse.Namespace) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    baseline = long_poll_baseline(url, min(options.events, 200))
    with (
        httpx.Client(timeout=30) as client,
        client.stream(  # warm-up: the stream code paths are loaded
            "GET", f"{url}/api/events", params={"after": str(latest_seq(url))}, headers={"Accept": "text/event-stream"}
        ) as response,
    ):
        assert response.status_code == 200
    time.sleep(1.0)
    idle = memory_kib(pid)
    after = latest_seq(url)
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    per_client = [options.streams // options.clients + (i < options.streams % options.clients)
                  for i in range(options.clients)]  # fmt: skip
    procs = [context.Process(target=client_process, args=(port, after, n, options.events + 3, ready, go, results))
             for n in per_client]  # fmt: skip
    for proc in procs:
        proc.start()
    opened = sum(ready.get(timeout=300) for _ in procs)
    time.sleep(2.0)
    loaded = memory_kib(pid)
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    gauge = next(line for line in metrics.splitlines() if line.startswith("tarefa_event_streams_open"))
    go.set()
    started = time.monotonic()
    httpx.post(f"{url}/api/ticker", params={"count": options.events}, timeout=30)
    streams = [stream for _ in procs for stream in results.get(timeout=options.events * options.tick * 4 + 600)]
    elapsed = time.monotonic() - started
    for proc in procs:
        proc.join(30)
    every = [latency for stream in streams for latency in stream]
    first = streams[0]
    return {
        "streams_open": opened,
        "gauge": gauge,
        "events": options.events + 3,
        "deliveries": len(every),
        "deliveries_expected": opened * (options.events + 3),
        "seconds": round(elapsed, 1),
        "latency_all_deliveries": _quantiles(every),
        "latency_first_stream": {"n": len(first), **_quantiles(first)},
        "baseline_long_poll_no_streams": {k: round(v, 2) for k, v in baseline.items()},
        "memory_kib": {"idle": idle, "with_streams": loaded},
        "per_stream_kib": {key: round((loaded[key] - idle[key]) / opened, 1) for key in ("rss", "pss")},
    }


def _quantiles(latencies: list[float]) -> dict[str, float]:
    return {f"p{round(q * 100)}_ms": round(percentile(latencies, q) * 1000, 2) for q in (0.5, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--tick", type=float, default=0.05)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--postgres", action="store_true")
    options = parser.parse_args()
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(postgres_database()) if options.postgres else None
        url, pid = stack.enter_context(server(store, options.tick))
        figures = measure(url, pid, options)
    figures["store"] = "postgresql" if options.postgres else "sqlite (synchronous=FULL)"
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
