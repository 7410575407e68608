"""The hand-written baseline: FastAPI + SQLite + ``asyncio.create_task``, clients polling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Group, free_port, start, stop, wait_for
from bench.systems.base import DEV_PYTHON, Deployment, bench_env
from bench.systems.tarefa_systems import answers


def uvicorn(stack: ExitStack, workdir: Path, app: str, probe: str, **env: str) -> tuple[int, int]:
    """Start ``uvicorn app`` (uvloop and httptools, as tarefa serve uses); its port and pid."""
    port = free_port()
    log = workdir / f"uvicorn-{port}.log"
    command = [DEV_PYTHON, "-m", "uvicorn", app, "--port", str(port), "--no-access-log", "--log-level", "warning",
               "--timeout-keep-alive", "130"]  # fmt: skip
    proc = start(command, env=bench_env(**env), log=log)
    stack.callback(stop, proc)
    wait_for(lambda: answers(port, probe), 60, app, proc, log)
    return port, proc.pid


@dataclass
class Handmade:
    key: str
    label: str
    interval: float
    family: str = "handmade"

    def unavailable(self) -> str | None:
        return None

    @contextmanager
    def deploy(self, workdir: Path, capacity: int) -> Iterator[Deployment]:
        db = workdir / f"handmade-{free_port()}.db"
        with ExitStack() as stack:
            port, pid = uvicorn(stack, workdir, "bench.servers.handmade_app:app", "/docs", HANDMADE_DB=str(db))
            options = {"url": f"http://127.0.0.1:{port}", "interval": self.interval}
            yield Deployment([Group("server", roots=[pid])], DEV_PYTHON, "bench.clients.handmade_client", options)
