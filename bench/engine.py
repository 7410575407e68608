"""Issue 2 figures: long-poll wake-up latency and the durable accept rate, on a real server.

    python bench/engine.py [--changes 250] [--seconds 10] [--connections 32]

Starts ``tarefa serve --app bench.apps:app`` on a fresh SQLite file (synchronous=FULL) and measures:

1. wake-up latency: a job makes a visible change every 50 ms; one client follows it with long
   polls; latency = time the answer is received minus the job's ``last_modified`` (same clock).
   Baseline in the same run: the round trip of a standard poll (a GET answered at once).
2. durable accept rate: wrk with C concurrent connections POSTs asynchronous calls (each a job
   committed with fsync before its 202), against the rate of standard polls (GETs, no write).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tarefa-bench-")
    command = [
        sys.executable,
        "-m",
        "tarefa",
        "serve",
        "--port",
        str(port),
        "--store",
        f"sqlite:///{workdir}/bench.db",
        "--app",
        "bench.apps:app",
        *args,
    ]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/api/jobs", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wakeup_latency(url: str, changes: int) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=130) as client:
        job = client.post("/api/ticker", params={"count": changes}).json()["job"]
        rtts = []
        for _ in range(200):
            started = time.perf_counter()
            client.get(f"/api/jobs/{job['id']}")
            rtts.append(time.perf_counter() - started)
        latencies = []
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
    return {
        "changes": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "baseline_rtt_p50_ms": statistics.median(rtts) * 1000,
    }


WRK_POST = """
wrk.method = "POST"
wrk.body = '{"n": 1}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(url: str, path: str, connections: int, seconds: int, script: str | None = None) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"{url}{path}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        if script:
            lua.write(script)
            command[1:1] = ["-s", lua.name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise RuntimeError(f"wrk saw {non_2xx.group(1)} error answers:\n{output}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert match, output
    return float(match.group(1))


def accept_rate(connections: int, seconds: int) -> dict[str, float]:
    with server("--workers", "0") as url:
        job_id = httpx.post(f"{url}/api/noop", json={}).json()["job"]["id"]
        gets = wrk(url, f"/api/jobs/{job_id}", connections, seconds)
        posts = wrk(url, "/api/noop", connections, seconds, WRK_POST)
        stored = httpx.get(f"{url}/api/jobs", params={"max_records": 1, "fields": "id"}).status_code
        assert stored == 200
    return {"accepts_per_s": posts, "baseline_gets_per_s": gets, "ratio": posts / gets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=250)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with server("--workers", "2") as url:
        latency = wakeup_latency(url, args.changes)
    rates = accept_rate(args.connections, args.seconds) if shutil.which("wrk") else {"skipped": "wrk not installed"}
    print(json.dumps({"wakeup_latency": latency, "accept": rates, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
