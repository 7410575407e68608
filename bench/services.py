"""The servers some systems need: Redis (Celery, arq) and PostgreSQL (tarefa's shared store).

Redis: the one at 127.0.0.1:6379 if it answers, else a private ``redis-server`` started for the
run on a free port (no persistence, like the default Redis). The benchmark uses database 15 and
empties it before each deployment. PostgreSQL: ``postgresql://postgres@127.0.0.1:5432``; each
deployment gets a fresh database ``tarefa_bench_<pid>``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Group, free_port, port_open, start, stop, wait_for

REDIS_DB = 15
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
#: One database per bench process, so that two runs (or a run and the tests) never share one.
POSTGRES_DB = f"tarefa_bench_{os.getpid()}"


@dataclass
class Redis:
    port: int
    pids_pattern: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{REDIS_DB}"

    def group(self) -> Group:
        return Group("redis", find=self.pids_pattern)

    def command(self, *words: str) -> bytes:
        """Send one command (RESP) to database 15 and return the raw answer."""

        def encode(*parts: str) -> bytes:
            out = f"*{len(parts)}\r\n".encode()
            for part in parts:
                out += f"${len(part.encode())}\r\n{part}\r\n".encode()
            return out

        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(encode("SELECT", str(REDIS_DB)) + encode(*words))
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer

    def flush(self) -> None:
        self.command("FLUSHDB")


@contextmanager
def redis() -> Iterator[Redis | str]:
    """The Redis to use, or the reason there is none."""
    if port_open(6379):
        yield Redis(6379, "redis-server .*:6379")
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield "no Redis at 127.0.0.1:6379 and no redis-server to start"
        return
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    proc = start([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(workdir)], log=workdir / "redis.log")  # fmt: skip
    try:
        wait_for(lambda: port_open(port), 10, "redis-server", proc, workdir / "redis.log")
        yield Redis(port, f"redis-server .*:{port}")
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed in the dev environment"
    try:
        with psycopg.connect(f"{POSTGRES_SERVER}/postgres", connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"cannot connect to {POSTGRES_SERVER}: {str(exc).strip().splitlines()[0]}"


def fresh_postgres_database() -> str:
    """Drop and create ``tarefa_bench_<pid>``; return its URL."""
    import psycopg

    with psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {POSTGRES_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {POSTGRES_DB}")
    return f"{POSTGRES_SERVER}/{POSTGRES_DB}"


def postgres_group() -> Group:
    """PostgreSQL's processes that work for the benchmark: the backends connected to its database
    and the shared writers (WAL writer, background writer, checkpointer), which others use too."""
    return Group("postgresql", find=f"postgres: .*( {POSTGRES_DB} |walwriter|background writer|checkpointer)")
