"""Issue 3 figures: what following a job costs the server, long polls (the client) vs standard polls.

    python bench/wait_cost.py [--changes 12] [--tick 5] [--jobs 1]

Serves ``bench.apps:app`` with ``tarefa serve`` on a fresh SQLite file. Each job is the app's
``ticker``: ``changes`` visible changes, one every ``tick`` seconds (default: 60 s, a change every
5 s). Three phases on the same server, one after the other, each with ``jobs`` jobs at once:

1. nobody follows the jobs: the baseline, the server's own cost of running them;
2. each job is followed by ``Client.wait`` (long polls, ``last_modified`` echoed);
3. each job is followed by a loop of standard polls (``GET /api/jobs/<id>``) every second.

For phases 2 and 3 it prints the requests sent and the server CPU time spent (utime + stime of
the ``tarefa serve`` process, from ``/proc/<pid>/stat``) beyond the baseline's CPU rate over the
same time, per job, and the ratios standard / long poll. Linux only (``/proc``); CPU time has the
resolution of the kernel's clock tick (usually 10 ms), so use ``--jobs 20`` for steadier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tarefa.client import Client, Job

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve(tick: float) -> Iterator[Server]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    workdir = tempfile.mkdtemp(prefix="tarefa-wait-cost-")
    command = [sys.executable, "-m", "tarefa", "serve", "--port", str(port), "--workers", "64"]
    command += ["--store", f"sqlite:///{workdir}/bench.db", "--app", "bench.apps:app"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_TICK_SECONDS": str(tick)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(f"http://127.0.0.1:{port}", retry_for=20) as client:
            list(client.list(max_records=1))  # retried until the server is up
        yield Server(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


class CountingTransport(httpx.HTTPTransport):
    """Counts the requests a client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests += 1
        return super().handle_request(request)


def nobody(client: Client, job: Job, seconds: float) -> Job:
    time.sleep(seconds + 1.0)
    return client.get(job)


def long_polls(client: Client, job: Job, seconds: float) -> Job:
    return client.wait(job, timeout=seconds * 3)


def standard_polls(client: Client, job: Job, seconds: float) -> Job:
    while not job.is_terminal:
        time.sleep(1.0)
        job = client.get(job)
    return job


Follower = Callable[[Client, Job, float], Job]


def phase(server: Server, follow: Follower, jobs: int, changes: int, tick: float) -> dict[str, float]:
    """Start ``jobs`` jobs, follow each in a thread; requests after the submits, CPU and time."""
    transport = CountingTransport()
    with Client(server.url, transport=transport) as client:
        started = [client.submit("POST", f"/api/ticker?count={changes}") for _ in range(jobs)]
        submits, cpu, clock = transport.requests, server.cpu_seconds(), time.monotonic()
        results: list[Job] = []
        threads = [
            threading.Thread(target=lambda j=j: results.append(follow(client, j, changes * tick))) for j in started
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed, cpu = time.monotonic() - clock, server.cpu_seconds() - cpu
    assert len(results) == jobs and all(r.state.value == "success" for r in results), results
    return {"requests": transport.requests - submits, "cpu_s": cpu, "elapsed_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=12, help="visible changes per job")
    parser.add_argument("--tick", type=float, default=5.0, help="seconds between changes")
    parser.add_argument("--jobs", type=int, default=1, help="jobs run and followed at once")
    args = parser.parse_args()
    with serve(args.tick) as server:
        figures = {
            name: phase(server, follow, args.jobs, args.changes, args.tick)
            for name, follow in (("baseline", nobody), ("long_poll", long_polls), ("standard_poll", standard_polls))
        }
    rate = figures["baseline"]["cpu_s"] / figures["baseline"]["elapsed_s"]
    for name in ("long_poll", "standard_poll"):
        extra = figures[name]["cpu_s"] - rate * figures[name]["elapsed_s"]
        figures[name]["follow_cpu_ms_per_job"] = round(max(0.0, extra) * 1000 / args.jobs, 1)
        figures[name]["requests_per_job"] = figures[name]["requests"] / args.jobs
    long, standard = figures["long_poll"], figures["standard_poll"]
    figures["ratio_standard_over_long"] = {
        "requests": round(standard["requests"] / max(1, long["requests"]), 1),
        "follow_cpu": round(standard["follow_cpu_ms_per_job"] / max(0.1, long["follow_cpu_ms_per_job"]), 1),
    }
    settings = {"job_seconds": args.changes * args.tick, "change_every_s": args.tick, "jobs": args.jobs}
    print(json.dumps({"settings": settings, **figures, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
