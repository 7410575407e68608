"""What the results were measured on: the machine, its load, and the versions of everything."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench import venvs
from bench.services import POSTGRES_SERVER, Redis

DEV_PACKAGES = ("tarefa", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "pydantic", "psycopg")


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def load_average() -> str:
    """``uptime``'s load averages (1, 5, 15 min)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def server_versions(redis: Redis | str) -> dict[str, str]:
    found = {}
    if isinstance(redis, Redis):
        info = redis.command("INFO", "server").decode(errors="replace")
        found["redis-server"] = _first_in(info, "redis_version:")
    found["postgresql"] = _postgres_version()
    return found


def _first_in(text: str, prefix: str) -> str:
    return next((line[len(prefix) :].strip() for line in text.splitlines() if line.startswith(prefix)), "?")


def _postgres_version() -> str:
    try:
        import psycopg

        with psycopg.connect(f"{POSTGRES_SERVER}/postgres", connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:
        return f"not available ({type(exc).__name__})"


def describe(redis: Redis | str, open_files: tuple[int, int]) -> dict[str, Any]:
    """The machine and the versions; ``open_files`` is the (soft, hard) limit the runner started with."""
    soft, hard = open_files
    versions = {name: _version(name) for name in DEV_PACKAGES}
    for venv, packages in (("celery", ("celery", "kombu", "redis")), ("arq", ("arq", "redis"))):
        python = venvs.VENVS / venv / "bin" / "python"
        for package in packages:
            key = package if package != "redis" else f"redis-py ({venv} venv)"
            versions[key] = venvs.version_of(python, package) if python.exists() else "not installed"
    versions.update(server_versions(redis))
    return {
        "cores": os.cpu_count(),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "memory": _first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "open_files_limit": f"soft {soft}, hard {hard} (the runner raises its soft limit to the hard one; "
        "every process it starts inherits it)",
        "versions": versions,
    }
