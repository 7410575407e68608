"""tarefa, the system under test: embedded on SQLite, and on PostgreSQL with separate workers."""

from __future__ import annotations

import http.client
import itertools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import services
from bench.procs import Group, free_port, start, stop, tail, wait_for
from bench.systems.base import DEV_PYTHON, Deployment, bench_env

APP = "bench.servers.tarefa_app:app"
TAREFA = [DEV_PYTHON, "-m", "tarefa"]
#: Numbers each worker's log: a log is appended to, so a worker of an earlier round must not leave
#: its "worker started" line in the log that the next round's worker is waited for by.
_WORKER_STARTS = itertools.count()


def answers(port: int, path: str = "/api/jobs?max_records=1") -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False


def serve(stack: ExitStack, workdir: Path, store: str, workers: int, name: str) -> tuple[int, int]:
    """Start one ``tarefa serve`` of the bench app; return its port and pid once it answers."""
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    command = [*TAREFA, "serve", "--port", str(port), "--store", store, "--app", APP, "--workers", str(workers)]
    proc = start(command, env=bench_env(), log=log)
    stack.callback(stop, proc)
    wait_for(lambda: answers(port), 60, f"tarefa serve ({name})", proc, log)
    return port, proc.pid


def work(stack: ExitStack, workdir: Path, store: str, concurrency: int, index: int) -> int:
    """Start one ``tarefa worker``; return its pid once it says it has started."""
    log = workdir / f"worker-{index}-{next(_WORKER_STARTS)}.log"
    command = [*TAREFA, "worker", "--store", store, "--app", APP, "--concurrency", str(concurrency)]
    proc = start(command, env=bench_env(), log=log)
    stack.callback(stop, proc)
    wait_for(lambda: "worker started" in tail(log), 60, "tarefa worker", proc, log)
    return proc.pid


@dataclass
class TarefaEmbedded:
    """``tarefa serve``: API and workers in one process, jobs in one SQLite file."""

    key: str = "tarefa-sqlite"
    label: str = "tarefa · SQLite, embedded"
    family: str = "tarefa"
    synchronous: str = "full"

    def unavailable(self) -> str | None:
        return None

    def store(self, workdir: Path) -> str:
        path = workdir / f"tarefa-{free_port()}.db"
        query = "" if self.synchronous == "full" else f"?synchronous={self.synchronous}"
        return f"sqlite:///{path}{query}"

    @contextmanager
    def deploy(self, workdir: Path, capacity: int) -> Iterator[Deployment]:
        with ExitStack() as stack:
            port, pid = serve(stack, workdir, self.store(workdir), max(4, capacity), "serve")
            options = {"urls": [f"http://127.0.0.1:{port}"]}
            yield Deployment([Group("server", roots=[pid])], DEV_PYTHON, "bench.clients.tarefa_client", options)


@dataclass
class TarefaPostgres:
    """``tarefa serve --workers 0`` API process(es) and ``tarefa worker`` processes on PostgreSQL."""

    key: str = "tarefa-postgres"
    label: str = "tarefa · PostgreSQL, API + worker processes"
    family: str = "tarefa"
    api_processes: int = 1
    worker_processes: int = 1

    def unavailable(self) -> str | None:
        return services.postgres_problem()

    @contextmanager
    def deploy(self, workdir: Path, capacity: int) -> Iterator[Deployment]:
        store = services.fresh_postgres_database()
        with ExitStack() as stack:
            apis = [serve(stack, workdir, store, 0, f"api-{i}") for i in range(self.api_processes)]
            each = max(4, -(-capacity // self.worker_processes))
            workers = [work(stack, workdir, store, each, i) for i in range(self.worker_processes)]
            groups = [
                Group("server", roots=[pid for _, pid in apis]),
                Group("workers", roots=workers),
                services.postgres_group(),
            ]
            options = {"urls": [f"http://127.0.0.1:{port}" for port, _ in apis]}
            yield Deployment(groups, DEV_PYTHON, "bench.clients.tarefa_client", options)
