"""W6: the cost of waiting, on one embedded tarefa server, phase after phase.

a. One job of ``seconds`` (60 s) that makes a visible change every ``every`` (5 s), followed by
   the tarefa client's long polls, against standard polls every 1 s and every 0.1 s.
b. ``quiet_clients`` (100) clients each waiting on its own job that does not change for
   ``seconds``: long polls against standard polls every 1 s.

Each case also runs once with nobody following (the jobs are submitted the same way and run,
unwatched): its server CPU rate is the cost of running the jobs, and what a following phase costs
*beyond* it is the cost of waiting. Requests are counted after the submits. "While waiting" is the
window from 25 % to 85 % of the jobs' length (every job submitted, nothing ending): server CPU
beyond the unwatched rate in that window, and the following client's CPU, per second.

CPU is the scheduler's count of each thread's time on a CPU (``/proc/<pid>/task/*/schedstat``,
nanoseconds), not ``/proc/<pid>/stat``'s clock ticks: following one job costs a few ms in 60 s,
less than one tick's 10 ms (the tick count is kept beside, ``cpu_ticks_s``, and used if a thread
of the server started or ended during a phase).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.procs import Group, thread_cpu_seconds
from bench.stats import Metric, Row, Workload
from bench.systems.base import DEV_PYTHON, Deployment, bench_env
from bench.systems.tarefa_systems import TarefaEmbedded

log = logging.getLogger("bench")
METRICS = [
    Metric("requests_per_change", "requests per visible change", False, 2),
    Metric("server_cpu_ms", "server CPU ms beyond running the jobs", False, 0),
    Metric("server_ms_per_s", "server CPU ms/s while waiting", False, 2),
    Metric("client_ms_per_s", "client CPU ms/s while waiting", False, 2),
    Metric("client_cpu_ms", "client CPU ms in all", False, 0),
]
METHODS = {
    "long": ("long-polls", "long polls (tarefa client)", "tarefa"),
    "poll-1": ("poll-1s", "standard polls every 1 s", "handmade"),
    "poll-0.1": ("poll-0.1s", "standard polls every 0.1 s", "handmade"),
}
WINDOW = (0.25, 0.85)  # "while waiting": this part of the jobs' length, after every submit


def _cpu(pids: list[int]) -> tuple[float, int]:
    """CPU seconds of these processes' live threads, to the nanosecond, and how many threads."""
    readings = [thread_cpu_seconds(pid) for pid in pids]
    return sum(cpu for cpu, _ in readings), sum(threads for _, threads in readings)


def _sample(server: Group, client: int) -> tuple[float, float, float, int]:
    cpu, threads = _cpu(server.pids())
    return time.monotonic(), cpu, _cpu([client])[0], threads


def phase(deployment: Deployment, mode: str, interval: float, job: dict[str, Any], jobs: int) -> dict[str, float]:
    """Submit ``jobs`` jobs and follow them by ``mode``: server CPU and wall time of the phase, and
    server and client CPU in the window while everyone waits."""
    server = deployment.groups[0]
    spec = {"url": deployment.options["urls"][0], "jobs": jobs, "mode": mode, "interval": interval, **job}
    server.begin()
    at_start = _cpu(server.pids())
    started = time.monotonic()
    command = [DEV_PYTHON, "-m", "bench.clients.follow", json.dumps(spec)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env())
    time.sleep(WINDOW[0] * job["seconds"])
    first = _sample(server, proc.pid)
    time.sleep(max(0.0, started + WINDOW[1] * job["seconds"] - time.monotonic()))
    last = _sample(server, proc.pid)
    out, err = proc.communicate(timeout=job["seconds"] * 3 + 120)
    elapsed, ticks, at_end = time.monotonic() - started, server.usage().cpu_s, _cpu(server.pids())
    # The scheduler's count (ns) where every thread lived through the phase, else clock ticks (10 ms).
    precise = at_start[1] == at_end[1] == first[3] == last[3]
    cpu = at_end[0] - at_start[0] if precise else ticks
    if not precise:
        log.warning("W6: the server's threads changed during the phase: its CPU in clock ticks")
    if proc.returncode != 0:
        raise RuntimeError(f"bench.clients.follow failed: {err[-1500:]}")
    outcome = json.loads(out.strip().splitlines()[-1])
    if mode != "none" and set(outcome["states"]) != {"success"}:
        raise RuntimeError(f"jobs did not all succeed: {set(outcome['states'])}")
    window = last[0] - first[0]
    return {"cpu_s": cpu, "cpu_ticks_s": ticks, "precise": precise, "elapsed_s": elapsed,
            "requests": outcome["requests"], "client_cpu_s": outcome["client_cpu_s"], "window_s": window,
            "window_server_cpu_s": last[1] - first[1], "window_client_cpu_s": last[2] - first[2]}  # fmt: skip


def compare(deployment: Deployment, job: dict[str, Any], jobs: int, changes: int, modes: list[str]) -> list[Row]:
    """One row per way of waiting: its figures against the same jobs run with nobody following."""
    idle = phase(deployment, "none", 0.0, job, jobs)
    idle_rate = idle["cpu_s"] / idle["elapsed_s"]
    idle_window_rate = idle["window_server_cpu_s"] / idle["window_s"]
    rows = []
    for method in modes:
        mode, _, interval = method.partition("-")
        figures = phase(deployment, mode, float(interval or 0), job, jobs)
        key, label, family = METHODS[method]
        extra = max(0.0, figures["cpu_s"] - idle_rate * figures["elapsed_s"])
        waiting = max(0.0, figures["window_server_cpu_s"] / figures["window_s"] - idle_window_rate)
        row = Row(key, label, family, details={**figures, "idle_cpu_s": idle["cpu_s"], "idle_s": idle["elapsed_s"]})
        row.figures = {
            "requests_per_change": figures["requests"] / (changes * jobs),
            "server_cpu_ms": extra * 1000,
            "server_ms_per_s": waiting * 1000,
            "client_ms_per_s": figures["window_client_cpu_s"] * 1000 / figures["window_s"],
            "client_cpu_ms": figures["client_cpu_s"] * 1000,
        }
        log.info("  %-12s %s", key, {k: round(v, 2) for k, v in row.figures.items() if v is not None})
        rows.append(row)
    return rows


def waiting_workloads(workdir: Path, params: dict[str, Any]) -> list[Workload]:
    seconds, every, clients = params["seconds"], params["every"], params["quiet_clients"]
    count = round(seconds / every)
    ticker = {"path": "/api/ticker", "json": {"count": count, "every": every}, "seconds": seconds}
    quiet = {"path": "/api/sleep", "json": {"seconds": seconds}, "seconds": seconds}
    changing = Workload(
        "W6a", f"W6 · one job of {seconds:.0f} s changing every {every:g} s: the cost of following it",
        f"tarefa · SQLite server; visible changes: running, {count} progress reports, success = {count + 2}; "
        "ratios against long polls", METRICS, reference="long-polls")  # fmt: skip
    still = Workload(
        "W6b", f"W6 · {clients} clients waiting on jobs that do not change for {seconds:.0f} s",
        "tarefa · SQLite server; visible changes per job: running, success = 2",
        METRICS, reference="long-polls")  # fmt: skip
    system = TarefaEmbedded()
    with system.deploy(workdir, capacity=max(8, clients + 1)) as deployment:
        changing.rows = compare(deployment, ticker, 1, count + 2, ["long", "poll-1", "poll-0.1"])
        still.rows = compare(deployment, quiet, clients, 2, ["long", "poll-1"])
    return [changing, still]
