"""Chaos run: API and worker processes killed at random (``kill -9``) and PostgreSQL restarted,
under load, then the promises checked. ``python -m bench.chaos --duration 60`` (bounded: it stops
by itself after ``--duration`` seconds of chaos, plus the time the jobs need to end).

Two ``tarefa serve --workers 0`` and two ``tarefa worker`` processes share a database of their
own on the local PostgreSQL (``TAREFA_TEST_POSTGRES``), serving ``tests/e2e/apps/multinode.py``,
whose jobs write every start to a run log. Load threads submit jobs, half of them retry-safe;
a chaos thread kills one process at a time and starts it again, and restarts PostgreSQL once.

Then every process is started again and the run waits for the jobs to end. The invariants:
- every job that got a 202 exists and ends in exactly one terminal state (one terminal event in its
  history), none is stuck ``queued`` or ``running``;
- no job that is not retry-safe started twice; a retry-safe one at most its ``max_attempts``.
It prints one JSON line of figures and exits 1 if an invariant is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = "tests.e2e.apps.multinode:app"
POSTGRES_URL = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LEASE = 2.0
RETRY_ATTEMPTS = 3  # multi.retryable's max_attempts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """One ``tarefa serve`` (with a port) or ``tarefa worker`` process, restartable."""

    args: list[str]
    log: Path
    env: dict[str, str]
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this start's output begins in the log

    def start(self) -> None:
        # a restart appends to the same log: only what this start writes tells it is ready
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tarefa", *self.args], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def ready(self) -> bool:
        if self.port is None:
            with self.log.open("rb") as log:
                log.seek(self.log_offset)
                return b"worker started" in log.read()
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/api/jobs?max_records=1", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


@dataclass
class Run:
    store: str
    workdir: Path
    seed: int
    processes: list[Process] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # job id → operation
    kills: int = 0
    postgres_restarts: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def runlog(self) -> Path:
        return self.workdir / "runlog.txt"

    def launch(self, apis: int = 2, workers: int = 2) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "TAREFA_TEST_RUNLOG": str(self.runlog),
        }
        common = ["--store", self.store, "--app", APP]
        for n in range(apis):
            port = free_port()
            args = ["serve", "--port", str(port), "--workers", "0", *common]
            self.processes.append(Process(args, self.workdir / f"api-{n}.log", env, port))
        for n in range(workers):
            args = ["worker", "--lease", str(LEASE), "--concurrency", "8", *common]
            self.processes.append(Process(args, self.workdir / f"worker-{n}.log", env))
        for process in self.processes:
            process.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            if process.proc is None or process.proc.poll() is not None:
                process.start()
            while not process.ready():
                if time.monotonic() > deadline:
                    raise SystemExit(f"{process.args[0]} did not start:\n{process.log.read_text(errors='replace')}")
                time.sleep(0.05)

    def apis(self) -> list[Process]:
        return [process for process in self.processes if process.port is not None]


def load(run: Run, stop: threading.Event, rng: random.Random) -> None:
    """Submit jobs to a random API process until told to stop; remember every 202."""
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            kind = rng.choice(["once", "retryable"])
            api = rng.choice(run.apis())
            work = {"steps": rng.randint(0, 4), "step": rng.choice([0.0, 0.05, 0.2])}
            try:
                answer = client.post(f"http://127.0.0.1:{api.port}/api/{kind}", json=work)
            except httpx.TransportError:
                run.refused["connection"] += 1
                time.sleep(0.05)
                continue
            if answer.status_code == 202:
                with run.lock:
                    run.accepted[answer.json()["job"]["id"]] = f"multi.{kind}"
            else:
                run.refused[str(answer.status_code)] += 1
                time.sleep(0.05)


def chaos(run: Run, stop: threading.Event, rng: random.Random, duration: float, restart_postgres: bool) -> None:
    """Kill one process at a time (and start it again); restart PostgreSQL once, midway."""
    started = time.monotonic()
    while not stop.wait(rng.uniform(0.5, 2.0)):
        if restart_postgres and run.postgres_restarts == 0 and time.monotonic() - started > duration / 2:
            control_postgres("stop")
            time.sleep(rng.uniform(0.5, 2.0))
            control_postgres("start")
            run.postgres_restarts += 1
            continue
        victim = rng.choice(run.processes)
        victim.kill()
        run.kills += 1
        time.sleep(rng.uniform(0.0, 1.0))
        victim.start()


def control_postgres(action: str) -> None:
    versions = sorted(os.listdir("/etc/postgresql"))
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def jobs_in_store(database: str) -> dict[str, dict[str, Any]]:
    query = """
        SELECT j.id, j.operation, j.state, j.error_code, j.lease_expires < now() AS lease_past,
            (SELECT count(*) FROM tarefa_job_events e WHERE e.job_id = j.id
                AND e.state IN ('success', 'failure')) AS terminal_events
        FROM tarefa_jobs j
    """
    with psycopg.connect(database, autocommit=True) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(query)
        return {row["id"]: row for row in cur.fetchall()}


def settle(run: Run, database: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Every process up again; wait until no job is queued or running, or until none has ended
    for ``timeout`` seconds (a stuck job makes no progress; a backlog of queued jobs does)."""
    run.wait_ready()
    deadline = time.monotonic() + timeout
    left = None
    while True:
        jobs = jobs_in_store(database)
        open_jobs = sum(job["state"] not in ("success", "failure") for job in jobs.values())
        if not open_jobs or time.monotonic() > deadline:
            return jobs
        if left is None or open_jobs < left:
            left, deadline = open_jobs, time.monotonic() + timeout
        time.sleep(0.5)


def verdict(run: Run, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    starts = Counter(line.split()[0] for line in run.runlog.read_text().splitlines() if line.strip())
    lost = [job_id for job_id in run.accepted if job_id not in jobs]
    stuck = [job_id for job_id, job in jobs.items() if job["state"] not in ("success", "failure")]
    not_once = [job_id for job_id, job in jobs.items() if job["state"] in ("success", "failure")
                and job["terminal_events"] != 1]  # fmt: skip
    twice = [job_id for job_id, op in run.accepted.items() if op == "multi.once" and starts[job_id] > 1]
    too_many = [job_id for job_id, op in run.accepted.items() if starts[job_id] > RETRY_ATTEMPTS]
    outcomes = Counter(f"{job['state']}/{job['error_code'] or 'ok'}" for job in jobs.values())
    return {
        "accepted": len(run.accepted),
        "in_store": len(jobs),
        "terminal": sum(1 for job in jobs.values() if job["state"] in ("success", "failure")),
        "lost": len(lost),
        "stuck": len(stuck),
        "terminal_events_not_one": len(not_once),
        "once_jobs_run_twice": len(twice),
        "retries_over_limit": len(too_many),
        "kills": run.kills,
        "postgres_restarts": run.postgres_restarts,
        "refused": dict(run.refused),
        "outcomes": dict(outcomes),
        "ok": not (lost or stuck or not_once or twice or too_many),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos under load")
    parser.add_argument("--clients", type=int, default=4, help="load threads")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-postgres-restart", action="store_true", help="kill processes only")
    options = parser.parse_args(argv)
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    name = f"tarefa_chaos_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query="").geturl()
    with tempfile.TemporaryDirectory(prefix="tarefa-chaos-") as workdir:
        run = Run(f"{database}?pool_size=4&pool_timeout=2", Path(workdir), seed)
        run.runlog.touch()
        try:
            result = exercise(run, database, options, seed)
        finally:
            for process in run.processes:
                process.kill()
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


def exercise(run: Run, database: str, options: argparse.Namespace, seed: int) -> dict[str, Any]:
    upgrade = subprocess.run(
        [sys.executable, "-m", "tarefa", "db", "upgrade", "--store", database], capture_output=True
    )
    if upgrade.returncode != 0:
        raise SystemExit(f"tarefa db upgrade failed: {upgrade.stdout!r} {upgrade.stderr!r}")
    run.launch()
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(run, stop, random.Random(seed + n))) for n in range(options.clients)]
    restart = not options.no_postgres_restart
    threads.append(threading.Thread(target=chaos, args=(run, stop, random.Random(seed), options.duration, restart)))
    for thread in threads:
        thread.start()
    time.sleep(options.duration)
    stop.set()
    for thread in threads:
        thread.join(60)
    jobs = settle(run, database, timeout=LEASE * RETRY_ATTEMPTS + 60)
    return {"seed": seed, "duration": options.duration, **verdict(run, jobs)}


if __name__ == "__main__":
    sys.exit(main())
