"""Several machines, on one machine: API processes (``tarefa serve --workers 0``) and worker processes
(``tarefa worker``) sharing one real PostgreSQL database (SPEC §5, §8).

- a long poll on one API process wakes on each change that a worker process makes;
- ``kill -9`` of a worker: its jobs are recovered within the lease by the rule of SPEC §5;
- PostgreSQL stopped and started again under load: no accepted job is lost, every process resumes
  by itself, and while the database is down the API answers ``503`` with the SPEC error body;
- 500 jobs on 4 workers in 2 processes: each runs exactly once.

The module works in a database of its own, ``tarefa_e2e_<random>``, created on the server named by
``TAREFA_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``) and dropped at the
end; an unreachable server fails the tests, it never skips them. The restart test stops and starts
the server with ``pg_ctlcluster`` (override with ``TAREFA_TEST_POSTGRES_STOP`` and
``TAREFA_TEST_POSTGRES_START``, shell commands): it disturbs anything else using that server.

The processes serve ``tests/e2e/apps/multinode.py``, whose jobs write each start (job id, pid,
attempt) to a run log, fsync'd, so the tests know how many times each job ran and where.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from job_polling import TERMINAL, follow, read_job
from psycopg import sql

pytestmark = pytest.mark.postgres

REPO_ROOT = Path(__file__).resolve().parents[2]
TAREFA = [sys.executable, "-m", "tarefa"]
APP = "tests.e2e.apps.multinode:app"
RUNLOG_ENV = "TAREFA_TEST_RUNLOG"
POSTGRES_URL = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

TAREFA_TABLES = ("tarefa_jobs", "tarefa_deleted_jobs", "tarefa_resources")

# -- the database ----------------------------------------------------------------------------------


def admin_connection(url: str = POSTGRES_URL) -> psycopg.Connection[Any]:
    """An autocommit connection for set-up; fails the test if the server is unreachable."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is unreachable at {url} (set TAREFA_TEST_POSTGRES): {exc}")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of this module's own, migrated with ``tarefa db upgrade``; dropped at the end."""
    name = f"tarefa_e2e_{secrets.token_hex(6)}"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query="").geturl()
    try:
        upgrade = subprocess.run([*TAREFA, "db", "upgrade", "--store", url], capture_output=True, text=True)
        assert upgrade.returncode == 0 and "schema is at version" in upgrade.stdout, upgrade
        yield url
    finally:
        with admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def store_url(database: str) -> str:
    """The module's database with no jobs (the previous test's processes are gone by now).

    A pool of 4 connections per process (plus one to LISTEN) is plenty here and leaves
    connections to whatever else shares the server."""
    with admin_connection(database) as conn:
        for table in TAREFA_TABLES:
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
    return f"{database}?pool_size=4"


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    """One ``tarefa serve`` (``port`` set) or ``tarefa worker`` process of the cluster."""

    command: list[str]
    log_path: Path
    env: dict[str, str]
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command[3]} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.command[3]} was not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if self.port is None:
            return "worker started" in self.log()
        try:
            return httpx.get(f"{self.url}/api/jobs", params={"max_records": 1}, timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.kill()


@dataclass
class Cluster:
    """API and worker processes of the test app on one store; the run log they write."""

    store_url: str
    workdir: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def runlog(self) -> Path:
        return self.workdir / "runlog.txt"

    def start(
        self, *, apis: int = 0, workers: int = 0, api_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()
    ) -> tuple[list[Node], list[Node]]:
        """Start ``apis`` API processes and ``workers`` worker processes together; wait until all are ready."""
        started_apis = [self._node("serve", ["--workers", "0", *api_args], free_port()) for _ in range(apis)]
        started_workers = [self._node("worker", list(worker_args), None) for _ in range(workers)]
        new = started_apis + started_workers
        for node in new:
            node.launch()
        for node in new:
            node.wait_ready()
        return started_apis, started_workers

    def _node(self, command: str, args: list[str], port: int | None) -> Node:
        where = ["--port", str(port)] if port is not None else []
        node = Node(
            command=[*TAREFA, command, *where, "--store", self.store_url, "--app", APP, *args],
            log_path=self.workdir / f"{command}-{len(self.nodes)}.log",
            env={
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                RUNLOG_ENV: str(self.runlog),
            },
            port=port,
        )
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def cluster(store_url: str, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(store_url, tmp_path)
    started.runlog.touch()
    try:
        yield started
    finally:
        started.stop()


# -- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """One line of the run log: a job started in a process, at an attempt."""

    job_id: str
    pid: int
    attempt: int


def starts(runlog: Path) -> list[Start]:
    """Every start written to the run log, in order."""
    lines = (line.split() for line in runlog.read_text().splitlines())
    return [Start(job_id, int(pid), int(attempt)) for job_id, pid, attempt in lines]


def client_for(node: Node) -> httpx.Client:
    return httpx.Client(base_url=node.url, timeout=httpx.Timeout(60.0, connect=5.0))


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def now() -> datetime:
    return datetime.now(UTC)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a precondition of the test (never used as the assertion itself)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


def submit(client: httpx.Client, kind: str, **work: float) -> dict[str, Any]:
    answer = client.post(f"/api/{kind}", json=work)
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()["job"]
    return job


def outcome(job: dict[str, Any]) -> tuple[str, str | None]:
    return job["state"], (job.get("error") or {}).get("code")


def assert_error_body(answer: httpx.Response, status: int, code: str) -> None:
    """SPEC §6: the error body, with ``Retry-After`` on a 503."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert answer.headers["request-id"]
    if status == 503:
        assert int(answer.headers["retry-after"]) >= 1, answer.headers


@dataclass
class Followed:
    """What a client saw while following one job with long polls."""

    seen: list[dict[str, Any]]
    wakeups: list[float]  # receipt - last_modified of each answer to a change made while the poll waited
    ran_in: int  # pid of the process that ran the job


def follow_every_change(submit_to: Node, poll: Node, runlog: Path, steps: int, step: float) -> Followed:
    """Submit a job through one API process and follow it through another one."""
    with client_for(submit_to) as submitter, client_for(poll) as poller:
        job = submit(submitter, "once", steps=steps, step=step)
        seen, wakeups = [job], []
        while job["state"] not in TERMINAL:
            sent = now()
            answer = poller.get(
                f"/api/jobs/{job['id']}", params={"poll_timeout": 30, "last_modified": job["last_modified"]}
            )
            received = now()
            assert answer.status_code == 200, answer.text
            changed = answer.json()["record"]
            assert changed["last_modified"] > job["last_modified"], (job, changed)
            if moment(changed["last_modified"]) > sent:
                wakeups.append((received - moment(changed["last_modified"])).total_seconds())
            seen.append(changed)
            job = changed
    [ran] = [start.pid for start in starts(runlog) if start.job_id == job["id"]]
    return Followed(seen, wakeups, ran)


def expected_changes(steps: int) -> list[tuple[str, str, int | None]]:
    """(state, message, progress) of each visible change of a ``multinode`` job, in order."""
    running = [("running", f"Step {index} of {steps}", index * 100 // steps) for index in range(1, steps + 1)]
    return [("queued", "Queued", None), ("running", "Running", None), *running, ("success", "Completed", 100)]


def assert_followed_every_change(followed: Followed, steps: int, worker_pids: set[int], bound: float) -> None:
    changes = [(job["state"], job["message"], job["progress"]) for job in followed.seen]
    assert changes == expected_changes(steps)  # every change seen, in order, none twice
    assert followed.ran_in in worker_pids  # made by another process than the one answering
    # the steps and the end come `step` seconds apart: each one answers a poll that was waiting
    assert len(followed.wakeups) >= steps + 1, followed.wakeups
    assert max(followed.wakeups) < bound, [f"{delay * 1000:.0f} ms" for delay in followed.wakeups]


# -- 1. long polls across processes ----------------------------------------------------------------

WAKEUP_BOUND = 1.0  # seconds from a change to the long poll's answer: generous (typically ~10 ms)


def test_a_long_poll_on_one_api_process_wakes_on_each_change_a_worker_process_makes(cluster: Cluster) -> None:
    apis, workers = cluster.start(apis=2, workers=2)
    steps, step = 8, 0.5
    with ThreadPoolExecutor(max_workers=2) as pool:
        # submitted through one API process, followed through the other, both ways at once
        runs = [pool.submit(follow_every_change, a, b, cluster.runlog, steps, step) for a, b in (apis, apis[::-1])]
        followed = [run.result(timeout=90) for run in runs]
    for each in followed:
        assert_followed_every_change(each, steps, {worker.pid for worker in workers}, WAKEUP_BOUND)


# -- 2. kill -9 of a worker ------------------------------------------------------------------------

LEASE = 3.0
RECOVERY_MARGIN = 2.0  # the recovery scan runs every lease/5 (0.6 s), plus a loaded machine's slack


def test_a_killed_workers_jobs_are_recovered_within_the_lease_by_the_rule(cluster: Cluster) -> None:
    lease = ("--lease", str(LEASE))
    [api], [doomed] = cluster.start(apis=1, workers=1, api_args=lease, worker_args=(*lease, "--concurrency", "2"))
    with client_for(api) as client:
        once = submit(client, "once", steps=60, step=0.25)  # 15 s of work
        retryable = submit(client, "retryable", steps=60, retry_steps=2, step=0.25)
        wait_until(lambda: len(starts(cluster.runlog)) == 2, "the first worker runs both jobs")
        _, [survivor] = cluster.start(workers=1, worker_args=(*lease, "--concurrency", "2"))
        # both jobs outlive a lease while their worker lives: it renews them, nobody recovers them
        latest_start = max(moment(read_job(client, job["id"])["start_time"]) for job in (once, retryable))
        wait_until(lambda: (now() - latest_start).total_seconds() > LEASE + 1.0, "both jobs outlived a lease")
        before = {job["id"]: read_job(client, job["id"]) for job in (once, retryable)}
        killed_at = now()  # just before: the delays measured below are, if anything, too long
        doomed.kill()
        ended = {job_id: follow(client, job, timeout=30) for job_id, job in before.items()}

    assert all(job["state"] == "running" and job["message"].startswith("Step") for job in before.values()), before
    ran = starts(cluster.runlog)
    assert len(ran) == 3 and set(ran[:2]) == {Start(once["id"], doomed.pid, 1), Start(retryable["id"], doomed.pid, 1)}
    assert ran[2] == Start(retryable["id"], survivor.pid, 2)  # the retry ran on the other worker
    lost, retried = ended[once["id"]], ended[retryable["id"]]
    assert outcome(lost) == ("failure", "worker_lost"), lost
    assert outcome(retried) == ("success", None) and retried["result"]["attempt"] == 2, retried
    # recovered after the kill, within the lease (plus the scan period and some slack)
    recovered_after = {
        "worker_lost": (moment(lost["end_time"]) - killed_at).total_seconds(),
        "retry started": (moment(retried["start_time"]) - killed_at).total_seconds(),
    }
    assert all(0 < delay <= LEASE + RECOVERY_MARGIN for delay in recovered_after.values()), recovered_after


# -- 3. PostgreSQL restarted under load --------------------------------------------------------------

RESTART_LEASE = 12.0  # longer than the outage: the jobs running across it keep their lease
POOL_TIMEOUT = 2.0  # a request waits this long for a connection, then answers 503
OUTAGE_POLL_TIMEOUT = 2  # the load clients' long polls: short, so that they keep asking during the outage
LOAD_WORK = {"steps": 2, "step": 0.05}
SUBMIT_PAUSE = 0.5  # between two submissions of a client that does not follow its jobs


def postgres_control(action: str) -> list[str]:
    """The shell command that stops or starts the PostgreSQL server of TAREFA_TEST_POSTGRES."""
    override = os.environ.get(f"TAREFA_TEST_POSTGRES_{action.upper()}")
    if override:
        return shlex.split(override)
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        pytest.fail(f"cannot {action} PostgreSQL: no /etc/postgresql; set TAREFA_TEST_POSTGRES_{action.upper()}")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action]


def control_postgres(action: str) -> None:
    done = subprocess.run(postgres_control(action), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"PostgreSQL {action}: {done.stdout}{done.stderr}"


@contextlib.contextmanager
def postgres_stopped() -> Iterator[None]:
    """PostgreSQL is down inside; started again after, whatever happens."""
    control_postgres("stop")
    try:
        yield
    finally:
        control_postgres("start")


@dataclass
class Exchange:
    """One request of the load clients: None for the status when the connection failed."""

    what: str
    status: int | None
    began: float
    ended: float
    answer: httpx.Response | None


@dataclass
class Load:
    """Clients that keep submitting jobs, retrying through an outage; the even ones follow each job to
    its end with long polls, the odd ones submit the next one after a pause.

    A submission carries an ``Idempotency-Key`` and is repeated with it until it gets its 202; a
    long poll that gets anything but a 200 is repeated after ``Retry-After``.
    """

    apis: list[Node]
    accepted: list[tuple[str, str, int, float]] = field(default_factory=list)  # id, kind, api, time
    exchanges: list[Exchange] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self, index: int) -> None:
        clients = [client_for(api) for api in self.apis]
        try:
            number = index
            while not self.stopping.is_set():
                kind = ("once", "retryable")[number // 2 % 2]
                job = self.submit(clients, number % len(clients), kind)
                if index % 2 == 0:
                    self.follow(clients[(number + 1) % len(clients)], job)
                else:
                    time.sleep(SUBMIT_PAUSE)
                number += 1
        finally:
            for client in clients:
                client.close()

    def submit(self, clients: list[httpx.Client], api: int, kind: str) -> dict[str, Any]:
        headers = {"Idempotency-Key": secrets.token_hex(8)}
        while True:
            answer = self.exchange("submit", clients[api], "POST", f"/api/{kind}", json=LOAD_WORK, headers=headers)
            if answer is not None and answer.status_code == 202:
                job: dict[str, Any] = answer.json()["job"]
                self.accepted.append((job["id"], kind, api, time.time()))
                return job
            self.pause(answer)

    def follow(self, client: httpx.Client, job: dict[str, Any]) -> None:
        deadline = time.monotonic() + 120
        while job["state"] not in TERMINAL and time.monotonic() < deadline:
            params = {"poll_timeout": OUTAGE_POLL_TIMEOUT, "last_modified": job["last_modified"]}
            answer = self.exchange("poll", client, "GET", f"/api/jobs/{job['id']}", params=params)
            if answer is not None and answer.status_code == 200:
                job = answer.json()["record"]
            else:
                self.pause(answer)

    def exchange(self, what: str, client: httpx.Client, method: str, url: str, **options: Any) -> httpx.Response | None:
        began = time.time()
        try:
            answer: httpx.Response | None = client.request(method, url, **options)
        except httpx.TransportError:
            answer = None
        status = None if answer is None else answer.status_code
        self.exchanges.append(Exchange(what, status, began, time.time(), answer))
        return answer

    @staticmethod
    def pause(answer: httpx.Response | None) -> None:
        time.sleep(float(answer.headers.get("retry-after", 1)) if answer is not None else 0.2)


OUTAGE_CALLS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("standard poll", "GET", "/api/jobs/{job}", {}),
    ("list", "GET", "/api/jobs", {}),
    ("submit", "POST", "/api/once", {"json": {}}),
]


def call_while_down(api: Node, call: tuple[str, str, str, dict[str, Any]], job_id: str) -> tuple[httpx.Response, float]:
    """One call to an API process while the database is down: its answer and how long it took."""
    _, method, url, options = call
    with client_for(api) as client:
        began = time.monotonic()
        answer = client.request(method, url.format(job=job_id), **options)
        return answer, time.monotonic() - began


def long_poll(api: Node, job: dict[str, Any], timeout: int) -> tuple[httpx.Response, float]:
    with client_for(api) as client:
        began = time.monotonic()
        answer = client.get(
            f"/api/jobs/{job['id']}", params={"poll_timeout": timeout, "last_modified": job["last_modified"]}
        )
        return answer, time.monotonic() - began


def test_postgresql_restarted_under_load_loses_no_accepted_job_and_every_process_resumes(cluster: Cluster) -> None:
    """Accepted jobs all end, by these rules: a ``retryable`` job ends ``success``; a ``once`` job ends
    ``success`` having run exactly once, or ``failure``/``worker_lost`` having run at most once, and
    that only if it was claimed before the database came back and ended after it went down (a claim
    whose commit was not confirmed to its worker, or a lease that ran out during the outage; a once
    job is never run twice to make up for it). No process is restarted."""
    cluster.store_url += f"&pool_timeout={POOL_TIMEOUT}"
    lease = ("--lease", str(RESTART_LEASE))
    apis, workers = cluster.start(apis=2, workers=2, api_args=lease, worker_args=(*lease, "--concurrency", "2"))
    load = Load(apis)
    with ThreadPoolExecutor(max_workers=16) as pool:
        clients = [pool.submit(load.run, index) for index in range(4)]
        wait_until(lambda: len(load.accepted) >= 20, "the load is under way")
        with client_for(apis[0]) as client:
            quiet = submit(client, "retryable", steps=1, step=15.0)  # no change for 15 s
            wait_until(lambda: read_job(client, quiet["id"])["state"] == "running", "the quiet job runs")
            quiet = read_job(client, quiet["id"])
        in_flight = [pool.submit(long_poll, api, quiet, 8) for api in apis]
        time.sleep(0.5)  # let the long polls reach the servers
        down_at = time.time()
        with postgres_stopped():
            probes = [pool.submit(call_while_down, api, call, quiet["id"]) for api in apis for call in OUTAGE_CALLS]
            outage_answers = [probe.result(timeout=60) for probe in probes]
        up_at = time.time()
        started_before_up = len(starts(cluster.runlog))
        wait_until(lambda: sum(at > up_at for *_, at in load.accepted) >= 20, "the load resumes", timeout=60)
        time.sleep(4.0)
        load.stopping.set()
        for each in clients:
            each.result(timeout=180)
        polls_in_flight = [poll.result(timeout=30) for poll in in_flight]

    # while the database was down: 503 with the SPEC error body and Retry-After, after the pool's timeout
    for answer, took in outage_answers:
        assert_error_body(answer, 503, "store_unavailable")
        assert took < POOL_TIMEOUT + 3.0, (answer.request.url, took)
    # the long polls in flight at the stop answered at their timeout, with the job as it was
    for answer, took in polls_in_flight:
        assert answer.status_code == 200, answer.text
        assert answer.json()["record"]["id"] == quiet["id"]
        assert took < 8 + 3.0, took
    # the load clients only ever saw answers or 503s; the processes never dropped a connection
    statuses = Counter(exchange.status for exchange in load.exchanges)
    assert set(statuses) <= {200, 202, 503} and statuses[503] > 0, statuses  # they did meet the outage
    for exchange in load.exchanges:
        if exchange.status == 503:
            assert exchange.answer is not None
            assert_error_body(exchange.answer, 503, "store_unavailable")
        if exchange.what == "poll":
            assert exchange.ended - exchange.began < OUTAGE_POLL_TIMEOUT + POOL_TIMEOUT + 5.0, exchange
    # every process resumed by itself: both APIs accepted jobs and both workers ran jobs afterwards
    assert all(node.alive() for node in cluster.nodes)
    assert {api for _, _, api, at in load.accepted if at > up_at} == {0, 1}
    assert {start.pid for start in starts(cluster.runlog)[started_before_up:]} == {w.pid for w in workers}
    # long polls wake across processes again (both APIs listen again)
    for submit_to, poll in (apis, apis[::-1]):
        followed = follow_every_change(submit_to, poll, cluster.runlog, steps=3, step=0.5)
        assert_followed_every_change(followed, 3, {worker.pid for worker in workers}, WAKEUP_BOUND)
    lost = assert_every_accepted_job_ended_by_the_rules(apis[0], cluster.runlog, load, down_at, up_at)
    print(  # shown with -s, or when the test fails
        f"outage {up_at - down_at:.1f} s; {len(load.accepted)} jobs accepted, {len(lost)} once-jobs worker_lost;"
        f" answers seen by the load clients: {dict(statuses)}"
    )


def assert_every_accepted_job_ended_by_the_rules(
    api: Node, runlog: Path, load: Load, down_at: float, up_at: float
) -> list[str]:
    """Check each accepted job's end (see the restart test's docstring); the once-jobs that were lost."""
    ran = Counter(start.job_id for start in starts(runlog))
    with client_for(api) as client:
        ended = {job_id: follow(client, read_job(client, job_id), timeout=60) for job_id, *_ in load.accepted}
    lost = []
    for job_id, kind, *_ in load.accepted:
        job = ended[job_id]
        if kind == "retryable":
            assert outcome(job) == ("success", None), job
            assert 1 <= ran[job_id] <= job["result"]["attempt"], (job, ran[job_id])
        elif outcome(job) == ("success", None):
            assert ran[job_id] == 1, (job, ran[job_id])
        else:
            assert outcome(job) == ("failure", "worker_lost"), job
            assert job["start_time"] is not None and ran[job_id] <= 1, (job, ran[job_id])
            assert moment(job["start_time"]).timestamp() < up_at and moment(job["end_time"]).timestamp() > down_at, job
            lost.append(job_id)
    assert len(lost) <= 4, f"{len(lost)} once-jobs lost their worker: more than the 4 that can run at once"
    return lost


# -- 4. exactly once, 500 jobs, 4 workers ------------------------------------------------------------

JOBS = 500


def test_500_jobs_on_4_workers_in_2_processes_each_run_exactly_once(cluster: Cluster) -> None:
    apis, workers = cluster.start(apis=2, workers=2, worker_args=("--concurrency", "2"))

    def submit_share(index: int) -> list[str]:
        with client_for(apis[index % 2]) as client:
            return [submit(client, "once", step=0.002)["id"] for _ in range(JOBS // 10)]

    with ThreadPoolExecutor(max_workers=10) as pool:
        accepted = [job_id for share in pool.map(submit_share, range(10)) for job_id in share]
    with client_for(apis[0]) as client:

        def unfinished() -> int:
            answer = client.get("/api/jobs", params={"state": "queued|running", "max_records": 1, "fields": "id"})
            assert answer.status_code == 200, answer.text
            return int(answer.json()["num_records"])

        wait_until(lambda: unfinished() == 0, "every job ended", timeout=120)
        listed = client.get("/api/jobs", params={"max_records": 1000, "fields": "result,error"}).json()["records"]
    ran = starts(cluster.runlog)

    assert len(accepted) == len(set(accepted)) == JOBS
    assert sorted(job["id"] for job in listed) == sorted(accepted)
    assert all(job["state"] == "success" for job in listed), [job for job in listed if job["state"] != "success"]
    assert Counter(start.job_id for start in ran) == Counter(accepted)  # each started exactly once
    assert all(start.attempt == 1 for start in ran)
    assert {start.pid for start in ran} == {worker.pid for worker in workers}  # both processes took part
    assert {job["id"]: job["result"]["pid"] for job in listed} == {start.job_id: start.pid for start in ran}
