"""No-op jobs per second end to end on PostgreSQL (1 API process + 2 worker processes), against the
embedded SQLite store (one process) measured in the same run.

    python bench/pg_throughput.py [--connections 32] [--seconds 8] [--rounds 3] [--waits]

Each round, on a fresh database ``tarefa_bench_<random>`` of ``$TAREFA_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``): ``tarefa serve --workers 0`` and two ``tarefa worker
--concurrency 16`` serving ``bench.apps:app``; then ``wrk -t1 -cC`` POSTs ``{"n": 1}`` to
``/api/noop?return_timeout=30`` for ``--seconds`` after a 2 s warm-up (each answer comes once its
job has ended, so a request is a job: queued, claimed, finished). Baseline, same round: ``tarefa
serve --workers 16`` on a SQLite file (synchronous=FULL), same wrk. Each round measures both; the
JSON gives every round and the medians.

Also given: the CPU share of each process; the CPU time spent per job by the tarefa processes and
(PostgreSQL) by the database's server processes, which varies less than the rate when other work
shares the machine; for PostgreSQL, transactions committed per second in the database (reads
included) and WAL flushes per second of the whole server (``pg_stat_wal.wal_sync``); with
``--waits``, how many of the database's backends were in each wait event on average, sampled every
10 ms ("CPU": active, not waiting).
Needs ``wrk`` (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.multinode import POSTGRES_URL, Process, cluster, postgres_database  # noqa: E402

WRK_POST = """
wrk.method = "POST"
wrk.body = '{"n": 1}'
wrk.headers["Content-Type"] = "application/json"
"""
PATH = "/api/noop?return_timeout=30"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, Any]:
    """Requests per second and latency of one wrk run; fails on any error answer."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url + PATH]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise RuntimeError(f"wrk saw {match.group(1)} error answers:\n{output}")
    if match := re.search(r"Socket errors: .*", output):
        raise RuntimeError(f"wrk saw socket errors ({match.group(0)}):\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert rate is not None, output
    return {"jobs_per_s": float(rate.group(1)), **_latencies(output)}


def _latencies(output: str) -> dict[str, float]:
    found = {}
    patterns = (("mean_ms", r"Latency\s+(\S+)"), ("p50_ms", r"(?m)^\s+50%\s+(\S+)"), ("p99_ms", r"(?m)^\s+99%\s+(\S+)"))
    for name, pattern in patterns:
        match = re.search(pattern, output)
        assert match is not None, output
        found[name] = _ms(match.group(1))
    return found


def _ms(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return round(float(number) * units[unit], 2)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a server process that ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_counters(store: str) -> tuple[int, int]:
    """Transactions committed in the database (reads included), WAL flushes of the whole server."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        name = urlsplit(store).path.lstrip("/")
        commits = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
        syncs = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
        assert commits is not None and syncs is not None
        return int(commits[0]), int(syncs[0])


class WaitSampler(threading.Thread):
    """Counts the wait events of the database's active backends, every 10 ms, until stopped."""

    QUERY = """
        SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity
        WHERE datname = %s AND state = 'active' AND pid <> pg_backend_pid()
    """

    def __init__(self, store: str) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        name = urlsplit(self.store).path.lstrip("/")
        with psycopg.connect(self.store, autocommit=True) as conn:
            while not self.stopping.wait(0.01):
                self.samples += 1
                self.counts.update(row[0] for row in conn.execute(self.QUERY, (name,)))

    def result(self) -> dict[str, float]:
        """Average number of backends in each wait, per sample."""
        return {event: round(count / self.samples, 2) for event, count in self.counts.most_common(8)}


def backend_pids(store: str) -> list[int]:
    """The server processes serving the database (the server runs on this machine)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (urlsplit(store).path.lstrip("/"),))
        return [row[0] for row in rows]


def measure(processes: list[Process], store: str | None, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    url = next(process.url for process in processes if process.port is not None)
    wrk(url, args.connections, 2, script)  # warm-up
    pids = [process.proc.pid for process in processes if process.proc is not None]
    backends = backend_pids(store) if store else []
    cpu_before = [cpu_seconds(pid) for pid in pids + backends]
    counters_before = server_counters(store) if store else (0, 0)
    sampler = WaitSampler(store) if store and args.waits else None
    if sampler:
        sampler.start()
    began = time.monotonic()
    figures = wrk(url, args.connections, args.seconds, script)
    elapsed = time.monotonic() - began
    if sampler:
        sampler.stopping.set()
        sampler.join()
        figures["waits"] = sampler.result()
    used = [cpu_seconds(pid) - before for pid, before in zip(pids + backends, cpu_before, strict=True)]
    figures["cpu_percent"] = [round(100 * seconds / elapsed) for seconds in used[: len(pids)]]
    jobs = figures["jobs_per_s"] * elapsed
    figures["cpu_ms_per_job"] = {"tarefa": round(1000 * sum(used[: len(pids)]) / jobs, 2)}
    if store:
        figures["cpu_ms_per_job"]["postgres"] = round(1000 * sum(used[len(pids) :]) / jobs, 2)
        after = server_counters(store)
        figures["commits_per_s"] = round((after[0] - counters_before[0]) / elapsed)
        figures["wal_flushes_per_s"] = round((after[1] - counters_before[1]) / elapsed)
    return figures


def postgres_round(args: argparse.Namespace, script: Path) -> dict[str, Any]:
    with postgres_database() as store, cluster(store) as nodes:
        upgrade = [sys.executable, "-m", "tarefa", "db", "upgrade", "--store", store]
        subprocess.run(upgrade, check=True, cwd=ROOT, capture_output=True)
        nodes.start(apis=1)
        nodes.start(workers=2, args=("--concurrency", "16"))
        return measure(nodes.processes, store, args, script)


def sqlite_round(args: argparse.Namespace, script: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tarefa-pgtp-") as workdir, cluster(f"sqlite:///{workdir}/b.db") as nodes:
        nodes.start(apis=1, api_workers=16)
        return measure(nodes.processes, None, args, script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (C)")
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per system and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring both systems")
    parser.add_argument("--waits", action="store_true", help="sample PostgreSQL wait events during the run")
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_POST)
        script.flush()
        for _ in range(args.rounds):
            sqlite = sqlite_round(args, Path(script.name))
            postgres = postgres_round(args, Path(script.name))
            rounds.append({"postgres": postgres, "sqlite": sqlite})
            print(json.dumps(rounds[-1]), file=sys.stderr)
    pg = statistics.median(r["postgres"]["jobs_per_s"] for r in rounds)
    lite = statistics.median(r["sqlite"]["jobs_per_s"] for r in rounds)
    summary = {
        "connections": args.connections,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
        "median_jobs_per_s": {
            "postgres_1_api_2_workers": pg,
            "baseline_embedded_sqlite_one_process": lite,
            "ratio": round(pg / lite, 2),
        },
        "median_cpu_ms_per_job": {
            "postgres": {
                side: statistics.median(r["postgres"]["cpu_ms_per_job"][side] for r in rounds)
                for side in ("tarefa", "postgres")
            },
            "sqlite": statistics.median(r["sqlite"]["cpu_ms_per_job"]["tarefa"] for r in rounds),
        },
        "median_latency_p50_ms": {
            "postgres": statistics.median(r["postgres"]["p50_ms"] for r in rounds),
            "sqlite": statistics.median(r["sqlite"]["p50_ms"] for r in rounds),
        },
        "rounds": rounds,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
