"""Real processes: start ``tarefa serve`` (and friends) on a free port and talk to them over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

TAREFA = [sys.executable, "-m", "tarefa"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """One ``tarefa serve`` process; ``restart()`` starts it again on the same port and store."""

    args: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*TAREFA, "serve", "--port", str(self.port), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tarefa serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/jobs", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"tarefa serve did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    """A factory: ``start_server("--workers", "2", step_delay=0.01)`` → a running ServerProcess.

    Every server gets its own SQLite file in ``tmp_path`` unless ``--store`` is given.
    """
    started: list[ServerProcess] = []

    def factory(*args: str, step_delay: float = 0.01, store: str | None = None) -> ServerProcess:
        store_url = store or f"sqlite:///{tmp_path}/tarefa-{len(started)}.db"
        server = ServerProcess(
            args=["--store", store_url, "--step-delay", str(step_delay), *args],
            port=free_port(),
            log_path=tmp_path / f"server-{len(started)}.log",
        )
        started.append(server)
        server.start()
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: object) -> ServerProcess:
    """A ``tarefa serve`` with 4 workers and 10 ms simulated steps."""
    return start_server()  # type: ignore[operator, no-any-return]
