"""Issue 4 figures: API processes and worker processes sharing one PostgreSQL, on this machine.

    python bench/multinode.py [--changes 250] [--seconds 10] [--clients 32] [--lease 5] [--rounds 3]

Creates a database ``tarefa_bench_<random>`` on ``$TAREFA_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``), serves ``bench.apps:app`` from it with
``tarefa serve --workers 0`` (API processes) and ``tarefa worker`` (worker processes), drops the
database at the end, and prints JSON. Each figure comes with a baseline measured in the same run:

1. ``wakeup``: a ``ticker`` job makes a visible change every 50 ms; it is submitted through API
   process 1, run by a worker process, and followed with long polls through API process 2, so every
   wake-up crosses processes through PostgreSQL's NOTIFY. Latency = receipt of the answer minus the
   job's ``last_modified`` (one machine, one clock), over every change that came while the poll
   waited. Baselines: the same on the embedded store (``tarefa serve --workers 2`` on SQLite, one
   process: no NOTIFY), and the round trip of a standard poll on API process 2.
2. ``throughput``: ``clients`` concurrent clients (asyncio, httpx) each loop: ``POST /api/noop?
   return_timeout=30`` (the answer comes when the job has ended: 200), and a long poll if it was a
   202. Jobs ended per second, end to end, with 2 API processes (clients spread over them) and 2
   worker processes (4 jobs at once each). Baseline: the same clients against one embedded process
   (SQLite, synchronous=FULL, 4 workers). The clients run on the same 2 cores as the servers.
3. ``recovery``: each round, one worker process is the only one when 4 long ``ticker`` jobs are
   submitted (it runs all 4); a second worker is started, then the first gets ``kill -9``. Time from
   the kill to each job's end (``worker_lost``: ``ticker`` is not retry-safe), as seen by a client
   long-polling it (receipt of the terminal job). Every process runs with ``--lease``; a lease
   runs out 2/3 to 3/3 of a lease after the last renewal, and every process scans for expired
   leases every min(2 s, lease/5). Baseline: the same jobs when their worker gets SIGTERM with
   ``--grace 0`` instead (it releases its jobs at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TERMINAL = ("success", "failure")

# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A ``tarefa serve`` (``port`` set) or ``tarefa worker`` process serving ``bench.apps:app``."""

    args: list[str]
    log: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> Process:
        command = "serve" if self.port is not None else "worker"
        where = ["--port", str(self.port)] if self.port is not None else []
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tarefa", command, *where, "--app", "bench.apps:app", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Process:
        deadline = time.monotonic() + timeout
        while not self._ready():
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{self.log.read_text()}"
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        if self.port is None:
            return "worker started" in self.log.read_text(errors="replace")
        try:
            return httpx.get(f"{self.url}/api/jobs", params={"max_records": 1}, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, number: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(number)
        self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Cluster:
    """Processes on one store; all killed when the cluster ends."""

    store: str
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    def start(
        self, *, apis: int = 0, workers: int = 0, args: tuple[str, ...] = (), api_workers: int = 0
    ) -> list[Process]:
        """Start API processes (running ``api_workers`` jobs at once) and worker processes; wait for all."""
        new = [self._process(["--workers", str(api_workers), *args], free_port()) for _ in range(apis)]
        new += [self._process(list(args), None) for _ in range(workers)]
        for process in new:
            process.launch()
        return [process.wait_ready() for process in new]

    def _process(self, args: list[str], port: int | None) -> Process:
        log = self.workdir / f"process-{len(self.processes)}.log"
        process = Process(["--store", self.store, *args], log, port)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@contextmanager
def cluster(store: str) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="tarefa-bench-multinode-") as workdir:
        running = Cluster(store, Path(workdir))
        try:
            yield running
        finally:
            running.stop()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the server of ``$TAREFA_TEST_POSTGRES``, dropped afterwards."""
    name = f"tarefa_bench_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query="").geturl()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- figures ---------------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def wakeup_latencies(submit_to: str, poll: str, changes: int) -> list[float]:
    """Follow a ticker job (a change every 50 ms) with long polls; receipt minus last_modified."""
    with httpx.Client(base_url=submit_to, timeout=60) as submitter, httpx.Client(base_url=poll, timeout=60) as poller:
        job = submitter.post("/api/ticker", params={"count": changes}).json()["job"]
        latencies = []
        while job["state"] not in TERMINAL:
            sent = time.time()
            params = {"poll_timeout": 30, "last_modified": job["last_modified"]}
            job = poller.get(f"/api/jobs/{job['id']}", params=params).json()["record"]
            received = time.time()
            if parse_time(job["last_modified"]) > sent:  # the change came while the poll waited
                latencies.append(received - parse_time(job["last_modified"]))
    return latencies


def standard_poll_rtts(url: str, count: int = 200) -> list[float]:
    with httpx.Client(base_url=url, timeout=30) as client:
        job_id = client.post("/api/noop", json={}).json()["job"]["id"]
        rtts = []
        for _ in range(count):
            began = time.perf_counter()
            client.get(f"/api/jobs/{job_id}")
            rtts.append(time.perf_counter() - began)
    return rtts


async def _client_loop(client: httpx.AsyncClient, url: str, stop_at: float, ended: list[float]) -> None:
    while time.monotonic() < stop_at:
        answer = await client.post(f"{url}/api/noop", params={"return_timeout": 30}, json={"n": 1})
        job = answer.json()["job"]
        while job["state"] not in TERMINAL:
            params = {"poll_timeout": 30, "last_modified": job["last_modified"]}
            job = (await client.get(f"{url}/api/jobs/{job['id']}", params=params)).json()["record"]
        ended.append(time.monotonic())


async def _throughput(urls: list[str], clients: int, seconds: float) -> float:
    """Jobs ended per second over ``seconds``, after a 2 s warm-up."""
    ended: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    began = time.monotonic()
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        loops = [_client_loop(client, urls[n % len(urls)], began + 2 + seconds, ended) for n in range(clients)]
        await asyncio.gather(*loops)
    return sum(began + 2 <= at < began + 2 + seconds for at in ended) / seconds


def throughput(urls: list[str], clients: int, seconds: float) -> float:
    return asyncio.run(_throughput(urls, clients, seconds))


def follow_to_end(url: str, job_id: str, ends: dict[str, float]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.get(f"/api/jobs/{job_id}").json()["record"]
        while job["state"] not in TERMINAL:
            params = {"poll_timeout": 60, "last_modified": job["last_modified"]}
            job = client.get(f"/api/jobs/{job_id}", params=params).json()["record"]
        ends[job_id] = time.time()
        assert job["state"] == "failure" and job["error"]["code"] == "worker_lost", job


def release_round(nodes: Cluster, api: Process, victim: Process, how: int, args: tuple[str, ...]) -> list[float]:
    """Four tickers on ``victim`` alone; start a rescuer; signal the victim; seconds to each job's end."""
    with httpx.Client(base_url=api.url, timeout=30) as client:
        ids = [client.post("/api/ticker", params={"count": 100_000}).json()["job"]["id"] for _ in range(4)]
        while client.get("/api/jobs", params={"state": "running"}).json()["num_records"] < 4:
            time.sleep(0.05)
    nodes.start(workers=1, args=args)
    ends: dict[str, float] = {}
    followers = [threading.Thread(target=follow_to_end, args=(api.url, job_id, ends)) for job_id in ids]
    for follower in followers:
        follower.start()
    time.sleep(0.5)  # the long polls are waiting
    signalled = time.time()
    victim.signal(how)
    for follower in followers:
        follower.join(120)
    return [ends[job_id] - signalled for job_id in ids]


def recovery(store: str, lease: float, rounds: int) -> dict[str, Any]:
    args = ("--lease", str(lease), "--grace", "0")
    killed: list[float] = []
    terminated: list[float] = []
    with cluster(store) as nodes:
        [api] = nodes.start(apis=1, args=args)
        [victim] = nodes.start(workers=1, args=args)
        for number in range(2 * rounds):
            how = signal.SIGKILL if number % 2 == 0 else signal.SIGTERM
            (killed if how == signal.SIGKILL else terminated).extend(release_round(nodes, api, victim, how, args))
            victim = nodes.processes[-1]  # the rescuer is the only worker left: next round's victim
    return {
        "lease_s": lease,
        "expected_window_s": [round(lease * 2 / 3, 2), round(lease + min(2.0, lease / 5), 2)],
        "kill_9_to_end_s": _seconds(killed),
        "baseline_sigterm_grace_0_to_end_s": _seconds(terminated),
    }


def _seconds(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


# -- main ------------------------------------------------------------------------------------------


def postgres_figures(store: str, changes: int, clients: int, seconds: float) -> dict[str, Any]:
    """Wake-up latency and throughput with 2 API processes and 2 worker processes."""
    with cluster(store) as nodes:
        apis = nodes.start(apis=2)
        nodes.start(workers=2)
        wakeups = wakeup_latencies(apis[0].url, apis[1].url, changes)
        rtts = standard_poll_rtts(apis[1].url)
        rate = throughput([api.url for api in apis], clients, seconds)
    return {"wakeup": summary_ms(wakeups), "rtt": summary_ms(rtts), "rate": rate}


def embedded_figures(changes: int, clients: int, seconds: float) -> dict[str, Any]:
    """The same workloads on one ``tarefa serve`` process with the embedded store (4 workers)."""
    with (
        tempfile.TemporaryDirectory(prefix="tarefa-bench-sqlite-") as workdir,
        cluster(f"sqlite:///{workdir}/b.db") as nodes,
    ):
        [server] = nodes.start(apis=1, api_workers=4)
        wakeups = wakeup_latencies(server.url, server.url, changes)
        rate = throughput([server.url], clients, seconds)
    return {"wakeup": summary_ms(wakeups), "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=250, help="visible changes followed (wake-up)")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds of each throughput run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (throughput)")
    parser.add_argument("--lease", type=float, default=5.0, help="lease of every process (recovery)")
    parser.add_argument("--rounds", type=int, default=3, help="kill -9 rounds of 4 jobs (recovery)")
    args = parser.parse_args()
    with postgres_database() as store:
        shared = postgres_figures(store, args.changes, args.clients, args.seconds)
        embedded = embedded_figures(args.changes, args.clients, args.seconds)
        recovered = recovery(store, args.lease, args.rounds)
    results = {
        "cpus": os.cpu_count(),
        "wakeup": {
            "postgres_api_process_to_worker_process": shared["wakeup"],
            "baseline_embedded_sqlite_one_process": embedded["wakeup"],
            "baseline_standard_poll_rtt_postgres_api": shared["rtt"],
        },
        "throughput_jobs_per_s": {
            "clients": args.clients,
            "postgres_2_api_processes_2_worker_processes": round(shared["rate"], 1),
            "baseline_embedded_sqlite_one_process_4_workers": round(embedded["rate"], 1),
            "ratio": round(shared["rate"] / embedded["rate"], 2),
        },
        "recovery": recovered,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
