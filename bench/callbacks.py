"""Issue 10 figure: callback delivery latency (event commit → the receiver has the request).

    python bench/callbacks.py [--jobs 300] [--rate 20] [--postgres]

Starts ``tarefa serve --app bench.apps:app`` on a fresh SQLite file (and, with ``--postgres``, on a
fresh database of ``$TAREFA_TEST_POSTGRES``), signing callbacks with a random secret and allowing
127.0.0.0/8, and a receiver on 127.0.0.1 (a thread of this process) that answers 200 at once.
It submits ``--jobs`` no-op jobs at ``--rate`` per second, each with ``Callback-URL`` (terminal
event only), and follows each one with long polls at the same time.

- latency of a callback = the time the receiver has the whole request minus the event's ``time``
  (the job's ``last_modified``, set just before the transaction commits; same machine, same clock);
- baseline, same run, same jobs: the long-poll wake-up of the same terminal change (the time the
  long poll's answer is received minus the same ``last_modified``).

Prints JSON: p50/p99/max in milliseconds of both, and the ratio callback/long poll.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.engine import free_port  # noqa: E402
from bench.multinode import postgres_database  # noqa: E402
from bench.stats import percentile  # noqa: E402

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Receiver:
    """Answers 200 to every POST and keeps (arrival time, job id, event time) of each."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                at = time.time()
                event = json.loads(body)["event"]
                with receiver.lock:
                    receiver.arrivals[event["job_id"]] = at - parse_time(event["time"])
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@contextlib.contextmanager
def serve(store: str) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "tarefa", "serve", "--port", str(port), "--store", store, "--app",
               "bench.apps:app", "--webhook-secret", SECRET, "--callback-allow", "127.0.0.0/8", "--log-level",
               "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/api/jobs", timeout=1)
                break
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def follow(client: httpx.AsyncClient, job: dict[str, Any]) -> float:
    """Long-poll the job to its end; the wake-up latency of the answer that showed the end."""
    while True:
        answer = await client.get(
            f"/api/jobs/{job['id']}", params={"poll_timeout": 30, "last_modified": job["last_modified"]}
        )
        received = time.time()
        job = answer.json()["record"]
        if job["state"] in ("success", "failure"):
            return received - parse_time(job["last_modified"])


async def run_jobs(url: str, receiver: Receiver, jobs: int, rate: float) -> dict[str, Any]:
    polls: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=200)) as client:

        async def one(i: int) -> None:
            answer = await client.post("/api/noop", json={"i": i}, headers={"Callback-URL": receiver.url})
            assert answer.status_code == 202, answer.text
            polls.append(await follow(client, answer.json()["job"]))

        tasks = []
        for i in range(jobs):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    deadline = time.monotonic() + 30
    while len(receiver.arrivals) < jobs and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    callbacks = list(receiver.arrivals.values())
    receiver.arrivals.clear()
    return {"jobs": jobs, "callbacks_received": len(callbacks), "callback": summary(callbacks),
            "baseline_long_poll": summary(polls), "ratio_p50": ratio(callbacks, polls, 0.5),
            "ratio_p99": ratio(callbacks, polls, 0.99)}  # fmt: skip


def summary(values: list[float]) -> dict[str, float | None]:
    def ms(q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value * 1000, 2)

    return {"p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1.0)}


def ratio(values: list[float], baseline: list[float], q: float) -> float | None:
    a, b = percentile(values, q), percentile(baseline, q)
    return None if a is None or not b else round(a / b, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="jobs submitted per second")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL ($TAREFA_TEST_POSTGRES)")
    args = parser.parse_args()
    receiver = Receiver()
    results: dict[str, Any] = {}
    workdir = tempfile.mkdtemp(prefix="tarefa-bench-callbacks-")
    try:
        with serve(f"sqlite:///{workdir}/bench.db") as url:
            results["sqlite"] = asyncio.run(run_jobs(url, receiver, args.jobs, args.rate))
        if args.postgres:
            with postgres_database() as store, serve(store) as url:
                results["postgres"] = asyncio.run(run_jobs(url, receiver, args.jobs, args.rate))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
