"""How close tarefa is to the floor of its job path (issue 11): W1 and W2 against a prototype that
does only what the path must (``bench/servers/floor_jobs.py``: raw ASGI on uvicorn, two durable
group commits per job, the answer), each driven by the same client library in the same run.

    python -m bench.floors [--rounds 3] [--w1 500] [--w2 3000] [--w3 200]

Per round, alternating: a fresh ``tarefa serve --app bench.servers.tarefa_app:app`` on a SQLite
file (synchronous=FULL) driven by ``tarefa.client.AsyncClient.run`` (one client, shared), and a
fresh floor server driven by a bare ``aiohttp.ClientSession.post`` (one session, shared); then, for
the client's layer, tarefa's server again driven by a bare aiohttp session sending what ``run`` sends.
W1: one caller, sequential; W2: 32 callers. Figures: jobs/s, latency p50, the server's CPU per job
(``/proc/<pid>/stat``) and the client's (this process, ``getrusage``). W3: 20 callers, jobs sleeping
0.2 s + a fixed jitter up to 0.1 s (as ``bench.run``'s W3): notify latency, when the caller has the
answer minus when the sleep ended.
Prints Markdown tables of the medians; ``--json`` prints every round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from bench.machine import load_average
from bench.procs import cpu_seconds, free_port, own_cpu_seconds, port_open, start, stop, wait_for
from bench.systems.base import DEV_PYTHON, bench_env
from bench.systems.tarefa_systems import APP, TAREFA, answers

from tarefa.client import AsyncClient

Call = Callable[[int], Awaitable[Any]]
W3_CALLERS = 20


@contextmanager
def tarefa_server(workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    log = workdir / f"tarefa-{port}.log"
    command = [*TAREFA, "serve", "--port", str(port), "--store", f"sqlite:///{workdir / f'{port}.db'}", "--app", APP,
               "--workers", "32"]  # fmt: skip
    with ExitStack() as stack:
        proc = start(command, env=bench_env(), log=log)
        stack.callback(stop, proc)
        wait_for(lambda: answers(port), 60, "tarefa serve", proc, log)
        yield port, proc.pid


@contextmanager
def floor_server(workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    log = workdir / f"floor-{port}.log"
    command = [DEV_PYTHON, "-m", "bench.servers.floor_jobs", str(port), str(workdir / f"floor-{port}.db")]
    with ExitStack() as stack:
        proc = start(command, env=bench_env(), log=log)
        stack.callback(stop, proc)
        wait_for(lambda: port_open(port), 60, "floor server", proc, log)
        yield port, proc.pid


async def drive(call: Call, jobs: int, concurrency: int, pid: int) -> dict[str, float]:
    for i in range(20):  # warm up
        await call(i)
    latencies: list[float] = []
    indexes = iter(range(jobs))

    async def caller() -> None:
        for index in indexes:
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    cpu0, own0, t0 = cpu_seconds(pid), own_cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall, cpu, own = time.perf_counter() - t0, cpu_seconds(pid) - cpu0, own_cpu_seconds() - own0
    return {"jobs_per_s": jobs / wall, "p50_ms": statistics.median(latencies) * 1e3,
            "server_cpu_ms_per_job": cpu / jobs * 1e3, "client_cpu_ms_per_job": own / jobs * 1e3}  # fmt: skip


async def notify(call: Callable[[float], Awaitable[float]], jobs: int, concurrency: int) -> dict[str, float]:
    """W3: jobs sleeping 0.2 s + a jitter up to 0.1 s; when the caller has the answer minus when
    the job's sleep ended (one clock), p50 and p99 (every job)."""
    late: list[float] = []
    indexes = iter(range(jobs))

    async def caller() -> None:
        for index in indexes:
            ended = await call(0.2 + random.Random(index).uniform(0.0, 0.1))
            late.append(time.time() - ended)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    late.sort()
    return {"notify_p50_ms": statistics.median(late) * 1e3, "notify_p99_ms": late[int(0.99 * (len(late) - 1))] * 1e3}


async def on_tarefa(port: int, pid: int, jobs: int, concurrency: int) -> dict[str, float]:
    client = AsyncClient(f"http://127.0.0.1:{port}", retry_for=30)
    try:

        async def call(i: int) -> Any:
            job = await client.run("POST", "/api/noop", {"i": i})
            assert job.result == {"i": i}, job

        async def sleep(seconds: float) -> float:
            return float((await client.run("POST", "/api/sleep", {"seconds": seconds})).result)

        if concurrency == W3_CALLERS:
            return await notify(sleep, jobs, concurrency)
        return await drive(call, jobs, concurrency, pid)
    finally:
        await client.aclose()


async def on_tarefa_bare(port: int, pid: int, jobs: int, concurrency: int) -> dict[str, float]:
    """tarefa's server driven by a bare aiohttp session sending what ``AsyncClient.run`` sends
    (``return_timeout``, a new ``Idempotency-Key``, the JSON body): the floor of the client's layer."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as session:

        async def call(i: int) -> Any:
            headers = {"Accept": "application/json", "Idempotency-Key": str(uuid.uuid4())}
            async with session.post("/api/noop?return_timeout=120", json={"i": i}, headers=headers) as answer:
                body = await answer.read()
            assert answer.status == 200 and orjson.loads(body)["job"]["result"] == {"i": i}, body

        return await drive(call, jobs, concurrency, pid)


async def on_floor(port: int, pid: int, jobs: int, concurrency: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as session:

        async def call(i: int) -> Any:
            async with session.post("/", json={"i": i}) as answer:
                body = await answer.read()
            assert json.loads(body)["result"] == {"i": i}

        async def sleep(seconds: float) -> float:
            async with session.post("/", json={"seconds": seconds}) as answer:
                return float(json.loads(await answer.read())["result"])

        if concurrency == W3_CALLERS:
            return await notify(sleep, jobs, concurrency)
        return await drive(call, jobs, concurrency, pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--w1", type=int, default=500)
    parser.add_argument("--w2", type=int, default=3000)
    parser.add_argument("--w3", type=int, default=200, help="W3's jobs (0: no W3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-floors-"))
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        systems = (("tarefa", tarefa_server, on_tarefa), ("floor", floor_server, on_floor),
                   ("tarefa server, bare aiohttp client", tarefa_server, on_tarefa_bare))  # fmt: skip
        for name, server, drive_it in systems:
            for workload, jobs, concurrency in (("W1", args.w1, 1), ("W2", args.w2, 32), ("W3", args.w3, W3_CALLERS)):
                if jobs == 0 or (drive_it is on_tarefa_bare and concurrency == W3_CALLERS):
                    continue
                with server(workdir) as (port, pid):
                    os.sync()  # the last run's writes, written back now, not during this one's fsyncs
                    figures = uvloop.run(drive_it(port, pid, jobs, concurrency))
                runs.setdefault(f"{name} {workload}", []).append(figures)
    medians = {key: {m: statistics.median(r[m] for r in rounds) for m in rounds[0]} for key, rounds in runs.items()}
    if args.json:
        print(json.dumps({"rounds": runs, "medians": medians, "load": load_average()}))
        return
    print(f"load average at the end: {load_average()}; medians of {args.rounds} rounds")
    print("| | jobs/s | p50 ms | server CPU ms/job | client CPU ms/job |")
    print("|---|---|---|---|---|")
    for key, f in medians.items():
        if "jobs_per_s" in f:
            print(f"| {key} | {f['jobs_per_s']:,.0f} | {f['p50_ms']:.2f} | {f['server_cpu_ms_per_job']:.3f} "
                  f"| {f['client_cpu_ms_per_job']:.3f} |")  # fmt: skip
    print()
    print("| | notify p50 ms | notify p99 ms |")
    print("|---|---|---|")
    for key, f in medians.items():
        if "notify_p50_ms" in f:
            print(f"| {key} | {f['notify_p50_ms']:.2f} | {f['notify_p99_ms']:.2f} |")


if __name__ == "__main__":
    main()
