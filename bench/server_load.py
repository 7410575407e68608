"""The server alone: a lean HTTP/1.1 caller (bare asyncio streams, ~30 µs a request) drives
``tarefa serve`` so that the server, not the client, is what is measured and profiled.

    python -m bench.server_load [--store sqlite|postgres] [--jobs 2000] [--concurrency 32]
        [--flow poll|return] [--profile OUT.txt] [--repeat 1]

``poll`` is what the client does without ``return_timeout``: POST, then long polls until the
job ends; ``return`` is one POST with ``return_timeout``. Printed: jobs/s, p50 and p99 ms, server CPU ms
per job (from /proc, the server process and its threads) and HTTP requests per job. With
``--profile``, py-spy records the server (raw collapsed stacks, by thread) for the run, and with
``--store postgres-split`` the worker too (``OUT.worker.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import orjson
from bench import services
from bench.procs import Group, cpu_by_thread, raise_fd_limit
from bench.systems.tarefa_systems import serve, work

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


class Caller:
    """One keep-alive connection; a request is written whole and its answer read by length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.requests = 0

    async def request(
        self, method: str, path: str, body: bytes = b"", key: str | None = None
    ) -> tuple[int, dict[str, object]]:
        head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n"
        if key is not None:
            head += f"idempotency-key: {key}\r\n"
        if body:
            head += "content-type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        self.requests += 1
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        data = await self.reader.readexactly(length) if length else b"{}"
        return int(status_line.split()[1]), orjson.loads(data)


async def drive(
    port: int,
    jobs: int,
    concurrency: int,
    flow: str,
    sleep: float = 0.0,
    lags: list[float] | None = None,
    keys: bool = False,
) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    kind, payload = ("sleep", orjson.dumps({"seconds": sleep})) if sleep else ("noop", b'{"n":1}')
    left = [jobs]
    callers = [Caller(*await asyncio.open_connection("127.0.0.1", port)) for _ in range(concurrency)]

    async def one(caller: Caller) -> None:
        while left[0] > 0:
            left[0] -= 1
            began = time.perf_counter()
            path = f"/api/{kind}?return_timeout=30" if flow == "return" else f"/api/{kind}"
            status, body = await caller.request("POST", path, payload, uuid.uuid4().hex if keys else None)
            assert status in (200, 202), body
            job = body["job"]
            assert isinstance(job, dict)
            while job["state"] not in ("success", "failure"):
                path = f"/api/jobs/{job['id']}?poll_timeout=30&last_modified={job['last_modified']}"
                status, body = await caller.request("GET", path)
                assert status == 200, body
                job = body["record"]  # type: ignore[assignment]
                assert isinstance(job, dict)
            assert job["state"] == "success", job
            latencies.append(time.perf_counter() - began)
            if sleep and lags is not None:
                lags.append(time.time() - float(job["result"]))  # the job returned the time it ended

    began = time.perf_counter()
    await asyncio.gather(*(one(c) for c in callers))
    wall = time.perf_counter() - began
    for caller in callers:
        caller.writer.close()
    return wall, latencies, sum(c.requests for c in callers)


def postgres_commits(store: str) -> int:
    """Transactions committed in the store's database so far (0 for SQLite). The statistics are
    flushed by each backend at most once a second: read after a short pause."""
    if not store.startswith("postgresql"):
        return 0
    import psycopg

    time.sleep(1.1)
    with psycopg.connect(store.partition("?")[0], autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--store", choices=["sqlite", "sqlite-normal", "postgres", "postgres-split"], default="sqlite",
        help="postgres: API and workers in one process; postgres-split: serve --workers 0 + tarefa worker",
    )  # fmt: skip
    parser.add_argument("--options", default="", help="store URL query options, e.g. writers=2&pool_size=4")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--flow", choices=["poll", "return"], default="poll")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output of the server")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keys", action="store_true", help="each POST sends an Idempotency-Key (as the client does)")
    parser.add_argument("--sleep", type=float, default=0.0, help="jobs sleep this long (W4: 3 s, 1,000 callers)")
    args = parser.parse_args()
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="tarefa-serverload-"))
    with ExitStack() as stack:
        if args.store.startswith("sqlite"):
            store = f"sqlite:///{workdir}/load.db" + ("?synchronous=normal" if args.store.endswith("normal") else "")
        else:
            store = services.fresh_postgres_database() + (f"?{args.options}" if args.options else "")
        split = args.store == "postgres-split"
        port, pid = serve(stack, workdir, store, 0 if split else max(4, args.concurrency), "serve")
        worker = work(stack, workdir, store, max(4, args.concurrency), 0) if split else None
        asyncio.run(drive(port, min(200, args.jobs), min(args.concurrency, 32), args.flow))  # warm up
        spies: list[subprocess.Popen[bytes]] = []
        if args.profile:
            targets = [(args.profile, pid)]
            if worker:  # the worker's profile beside the server's: OUT.worker.txt
                targets.append((args.profile.with_suffix(".worker" + args.profile.suffix), worker))
            for out, target in targets:
                spies.append(subprocess.Popen(
                    [*"py-spy record --format raw --threads --rate 250 -o".split(), str(out), "-p", str(target)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ))  # fmt: skip
            time.sleep(1.0)
        for _ in range(args.repeat):
            cpu0, threads0 = cpu_seconds(pid), cpu_by_thread(pid)
            wcpu0 = cpu_seconds(worker) if worker else (0.0, 0.0)
            commits0 = postgres_commits(store)
            backends = Group("postgresql", find=f"postgres: .* {services.POSTGRES_DB} ")  # this run's backends
            backends.begin()
            lags: list[float] = []
            wall, latencies, requests = asyncio.run(
                drive(port, args.jobs, args.concurrency, args.flow, args.sleep, lags, args.keys)
            )
            user, system = (b - a for a, b in zip(cpu0, cpu_seconds(pid), strict=True))
            cpu = user + system
            threads = {("main" if tid == pid else f"thread {tid}"): s - threads0.get(tid, 0.0)
                       for tid, s in cpu_by_thread(pid).items()}  # fmt: skip
            wcpu = sum(cpu_seconds(worker)) - sum(wcpu0) if worker else 0.0
            commits = postgres_commits(store) - commits0
            pg_cpu = backends.usage().cpu_s if commits else 0.0
            extra = f", worker {wcpu / args.jobs * 1000:.2f} CPU ms/job" if worker else ""
            if commits:
                extra += f", {commits / args.jobs:.2f} PostgreSQL transactions/job (reads too)"
                extra += f", PostgreSQL backends {pg_cpu / args.jobs * 1000:.2f} CPU ms/job"
            print(f"{args.store} {args.flow} C={args.concurrency}: {args.jobs / wall:,.0f} jobs/s, "
                  f"p50 {statistics.median(latencies) * 1000:.2f} ms, p99 {_p99(latencies) * 1000:.2f} ms, "
                  f"server {cpu / args.jobs * 1000:.2f} CPU ms/job "
                  f"({system / args.jobs * 1000:.2f} system), "
                  f"{requests / args.jobs:.2f} requests/job, wall {wall:.2f} s{extra}"
                  + (f", end-to-answer p50 {statistics.median(lags) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
                     if lags else ""), flush=True)  # fmt: skip
            print("  by thread, CPU ms/job: " + ", ".join(
                f"{name} {s / args.jobs * 1000:.3f}" for name, s in sorted(threads.items(), key=lambda t: -t[1])
                if s > 0), flush=True)  # fmt: skip
        for spy in spies:
            spy.send_signal(2)
        for spy in spies:
            spy.wait(30)
    return 0


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


if __name__ == "__main__":
    sys.exit(main())
