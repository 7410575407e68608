"""W5: 10,000 waiting requests held by one API process on jobs that end together.

Jobs are made to sleep until one wall-clock instant ``until``; once they run, a raw-socket load
generator (``bench.clients.holdpolls``, one connection per request) sends the requests and says
when all are written. Measured on the API process: memory per waiting request (VmRSS with every
request held - VmRSS before, divided by the requests), CPU while they wait (from the moment the
server has taken them all, i.e. its CPU use has fallen under 3 % of a core, to just before the jobs
end), and the time from the jobs' end to the last answer.

Taking part: tarefa (long polls: ``poll_timeout=120&last_modified=<as read>``), the floor (the same
HTTP stack holding each request on a timer and nothing else), and the hand-written baseline with
every waiter polling ``GET /jobs/{id}`` each second on a keep-alive connection.
"""

from __future__ import annotations

import json
import logging
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from bench.procs import Group, memory_kb
from bench.stats import Metric, Row, Workload
from bench.systems.base import DEV_PYTHON, Deployment, System, bench_env
from bench.systems.handmade import uvicorn

log = logging.getLogger("bench")
METRICS = [
    Metric("kb_per_wait", "KB per waiting request", False, 2),
    Metric("cpu_pct_waiting", "server CPU % of a core while waiting", False, 2),
    Metric("answer_all_s", "s from job end to last answer", False, 3),
]


@dataclass
class Plan:
    """What the load generator sends, and how to learn when the jobs really ended."""

    paths: list[str]
    mode: str
    ended: Callable[[], float]
    interval: float = 1.0
    marker: str = ""


def _wait_running(http: httpx.Client, ids: list[str], deadline: float) -> list[str]:
    """Each job's ``last_modified`` once it is running (the long poll's baseline)."""
    stamps: dict[str, str] = {}
    while len(stamps) < len(ids) and time.time() < deadline:
        for job_id in ids:
            if job_id not in stamps:
                record = http.get(f"/api/jobs/{job_id}").json()["record"]
                if record["state"] == "running":
                    stamps[job_id] = record["last_modified"]
        time.sleep(0.05)
    if len(stamps) < len(ids):
        raise RuntimeError(f"only {len(stamps)} of {len(ids)} jobs were running in time")
    return [stamps[job_id] for job_id in ids]


def tarefa_plan(url: str, jobs: int, polls: int, until: float) -> Plan:
    with httpx.Client(base_url=url, timeout=30) as http:
        ids = [http.post("/api/sleep", json={"until": until}).json()["job"]["id"] for _ in range(jobs)]
        stamps = _wait_running(http, ids, until - 1)

    def ended() -> float:
        with httpx.Client(base_url=url, timeout=30) as http:
            return max(float(http.get(f"/api/jobs/{i}").json()["record"]["result"]) for i in ids)

    paths = [f"/api/jobs/{ids[n % jobs]}?poll_timeout=120&last_modified={quote(stamps[n % jobs])}"
             for n in range(polls)]  # fmt: skip
    return Plan(paths, "hold", ended)


def handmade_plan(url: str, jobs: int, polls: int, until: float) -> Plan:
    with httpx.Client(base_url=url, timeout=30) as http:
        ids = [http.post("/jobs/sleep", json={"until": until}).json()["id"] for _ in range(jobs)]

    def ended() -> float:
        with httpx.Client(base_url=url, timeout=30) as http:
            return max(float(http.get(f"/jobs/{i}").json()["result"]) for i in ids)

    return Plan([f"/jobs/{ids[n % jobs]}" for n in range(polls)], "poll", ended, 1.0, '"state":"success"')


def floor_plan(url: str, jobs: int, polls: int, until: float) -> Plan:
    return Plan([f"/hold?until={until}"] * polls, "hold", lambda: until)


@dataclass
class Floor:
    """The floor: uvicorn + FastAPI holding each request on a timer (``servers/floor_app.py``)."""

    key: str = "floor"
    label: str = "floor: bare uvicorn + FastAPI holding a request"
    family: str = "floor"

    def unavailable(self) -> str | None:
        return None

    @contextmanager
    def deploy(self, workdir: Path, capacity: int) -> Iterator[Deployment]:
        with ExitStack() as stack:
            port, pid = uvicorn(stack, workdir, "bench.servers.floor_app:app", "/docs")
            yield Deployment([Group("server", roots=[pid])], DEV_PYTHON, "", {"url": f"http://127.0.0.1:{port}"})


Planner = Callable[[str, int, int, float], Plan]


def url_of(deployment: Deployment) -> str:
    return str(deployment.options.get("url") or deployment.options["urls"][0])


def _read_held(proc: subprocess.Popen[str], deadline: float) -> float:
    assert proc.stdout is not None
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
        if ready:
            line = proc.stdout.readline()
            if line.startswith("held"):
                return time.time()
            if not line:
                break
    raise RuntimeError("the load generator did not hold every request before the jobs ended")


def _settle(server: Group, deadline: float) -> float:
    """Wait until the server has taken every request: its CPU falls under 3 % of a core over 0.5 s
    (the requests are written, but the server may still be reading them). Returns when."""
    while time.time() < deadline:
        server.begin()
        time.sleep(0.5)
        if server.usage().cpu_s <= 0.015:
            break
    return time.time()


def measure_held(deployment: Deployment, plan_of: Planner, params: dict[str, Any]) -> dict[str, Any]:
    server = deployment.groups[0]
    until = time.time() + params["lead_s"]
    plan = plan_of(url_of(deployment), params["jobs"], params["polls"], until)
    pids = server.pids()
    rss_before = sum(memory_kb(pid, "VmRSS") for pid in pids)
    spec = {"port": int(url_of(deployment).rsplit(":", 1)[1]), "paths": plan.paths, "mode": plan.mode,
            "interval": plan.interval, "done_marker": plan.marker, "timeout_s": params["lead_s"] + 60}  # fmt: skip
    command = [DEV_PYTHON, "-m", "bench.clients.holdpolls"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=bench_env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() only reads
    _read_held(proc, until)
    quiet_at = _settle(server, until - 2.0)
    rss_held = sum(memory_kb(pid, "VmRSS") for pid in pids)
    server.begin()
    window_start = time.time()
    time.sleep(max(0.0, until - time.time() - 0.2))
    window = time.time() - window_start
    cpu = server.usage().cpu_s
    out, _ = proc.communicate(timeout=params["lead_s"] + 120)
    outcome = json.loads(out.strip().splitlines()[-1])
    ended = plan.ended()
    last = max(outcome["received"], default=float("nan"))
    return {
        "kb_per_wait": (rss_held - rss_before) / len(plan.paths),
        "cpu_pct_waiting": 100 * cpu / window if window > 0.2 else None,
        "answer_all_s": last - ended,
        "window_s": window,
        "all_waiting_after_s": quiet_at - (until - params["lead_s"]),
        "answered": len(outcome["received"]),
        "errors": outcome["error_count"],
        "first_errors": outcome["errors"][:3],
        "requests": outcome["requests"],
        "loadgen_cpu_s": outcome["client"]["cpu_s"],
    }


def held_row(system: System, plan_of: Planner, workdir: Path, params: dict[str, Any]) -> Row:
    row = Row(system.key, system.label, system.family)
    try:
        with system.deploy(workdir, params["jobs"]) as running:
            figures = measure_held(running, plan_of, params)
    except Exception as exc:
        log.exception("%s failed in W5", system.key)
        row.unavailable = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        return row
    row.figures = {m.key: figures.pop(m.key) for m in METRICS}
    row.details = figures
    log.info("  %-20s %s", system.key, {k: round(v, 3) for k, v in row.figures.items() if v is not None})
    return row


def held_workload(parts: list[tuple[System, Planner]], workdir: Path, params: dict[str, Any]) -> Workload:
    setup = (f"{params['polls']:,} requests waiting on {params['jobs']} jobs that end together, one connection "
             f"each (raw-socket load generator); jobs end {params['lead_s']:.0f} s after they start")  # fmt: skip
    title = f"W5 · {params['polls']:,} waiting requests held by one API process"
    workload = Workload("W5", title, setup, METRICS)
    workload.rows = [held_row(system, plan, workdir, params) for system, plan in parts]
    return workload
