"""The task queues people would use instead, on Redis: Celery and arq, each in its own venv."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import venvs
from bench.procs import Group, start, stop, wait_for
from bench.services import REDIS_DB, Redis
from bench.systems.base import Deployment, bench_env


def prepare(redis: Redis | str, venv: str) -> tuple[str | None, str]:
    """(reason it cannot run or None, the venv's python)."""
    if isinstance(redis, str):
        return redis, ""
    try:
        return None, str(venvs.ensure(venv))
    except RuntimeError as exc:
        return str(exc), ""


def start_worker(stack: ExitStack, workdir: Path, command: list[str], env: dict[str, str], name: str) -> int:
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    proc = start(command, env=bench_env(BENCH_READY_FILE=str(ready), **env), log=log)
    stack.callback(stop, proc)
    wait_for(ready.exists, 60, name, proc, log)
    return proc.pid


@dataclass
class CeleryRedis:
    """A Celery worker (threads pool, one thread per job at once; prefork for one job at a time)
    and callers blocking on ``AsyncResult.get()``."""

    redis: Redis | str
    key: str = "celery"
    label: str = "Celery 5 + Redis"
    family: str = "celery"
    pool: str = "threads"
    python: str = field(default="", init=False)

    def unavailable(self) -> str | None:
        reason, self.python = prepare(self.redis, "celery")
        return reason

    @contextmanager
    def deploy(self, workdir: Path, capacity: int) -> Iterator[Deployment]:
        assert isinstance(self.redis, Redis)
        self.redis.flush()
        pool = ["-P", self.pool, "-c", str(max(2, capacity) if self.pool == "threads" else 2)]
        command = [str(Path(self.python).parent / "celery"), "-A", "bench.clients.celery_tasks", "worker", *pool,
                   "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        with ExitStack() as stack:
            pid = start_worker(stack, workdir, command, {"BENCH_REDIS_URL": self.redis.url}, "celery-worker")
            groups = [Group("workers", roots=[pid]), self.redis.group()]
            options = {"threads": capacity}
            client_env = {"BENCH_REDIS_URL": self.redis.url}
            yield Deployment(groups, self.python, "bench.clients.celery_client", options, client_env)


@dataclass
class ArqRedis:
    """An arq worker (``max_jobs`` = jobs at once) and callers awaiting ``job.result()``; the
    worker's queue polls and the callers' result polls both every ``poll_delay`` seconds."""

    redis: Redis | str
    poll_delay: float
    key: str = "arq"
    label: str = "arq + Redis"
    family: str = "arq"
    python: str = field(default="", init=False)

    def unavailable(self) -> str | None:
        reason, self.python = prepare(self.redis, "arq")
        return reason

    @contextmanager
    def deploy(self, workdir: Path, capacity: int) -> Iterator[Deployment]:
        assert isinstance(self.redis, Redis)
        self.redis.flush()
        env = {"BENCH_REDIS_PORT": str(self.redis.port), "BENCH_REDIS_DB": str(REDIS_DB),
               "BENCH_MAX_JOBS": str(max(10, capacity)), "BENCH_POLL_DELAY": str(self.poll_delay)}  # fmt: skip
        with ExitStack() as stack:
            pid = start_worker(stack, workdir, [self.python, "-m", "bench.clients.arq_tasks"], env, "arq-worker")
            groups = [Group("workers", roots=[pid]), self.redis.group()]
            options = {"poll_delay": self.poll_delay}
            yield Deployment(groups, self.python, "bench.clients.arq_client", options, env)
