"""The common interface of the systems compared, and the one way every batch of jobs is run.

A system module defines a :class:`System`: what it needs (``unavailable()``), and how to deploy
it for a given number of jobs at once (``deploy()``: start its processes, yield a
:class:`Deployment` naming the process groups to measure and the client program to run).
:func:`submit_and_wait` is the same for all: deploy fresh, run the client program in the
system's own Python, measure every process involved, tear down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.procs import Group, Usage, measure

ROOT = Path(__file__).resolve().parents[2]
DEV_PYTHON = sys.executable


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every process the benchmark starts: ``bench`` importable, no buffering."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class Deployment:
    """A running system: the processes to measure and the client program that drives it."""

    groups: list[Group]
    python: str
    client_module: str
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


class System(Protocol):
    key: str
    label: str
    family: str  # "tarefa", "celery", "arq", "handmade": what a row is compared with

    def unavailable(self) -> str | None:
        """Why this system cannot run here (checked, and prepared, once per run), or None."""

    def deploy(self, workdir: Path, capacity: int) -> AbstractContextManager[Deployment]:
        """Start the system able to run ``capacity`` jobs at once; stop it on exit."""


@dataclass
class Batch:
    """One batch of jobs run by one system: per-job times and what every process cost."""

    system: str
    records: list[list[float | None]]
    errors: list[str]
    error_count: int
    usage: dict[str, Usage]

    @property
    def latencies(self) -> list[float]:
        return [seen - submitted for submitted, seen, _ in self.records]  # type: ignore[operator]

    @property
    def notify_latencies(self) -> list[float]:
        return [seen - ended for _, seen, ended in self.records if ended is not None]  # type: ignore[operator]

    @property
    def wall(self) -> float:
        if not self.records:
            return 0.0
        return max(r[1] for r in self.records) - min(r[0] for r in self.records)  # type: ignore[type-var, operator]

    @property
    def total(self) -> Usage:
        return sum(self.usage.values(), Usage())


def run_client(deployment: Deployment, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the deployment's client program (``bench.clients.*``) and return the JSON it printed."""
    module = deployment.client_module
    command = [deployment.python, "-m", module, json.dumps(spec)]
    env = bench_env(**deployment.env)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{module} exited with {done.returncode}: {done.stderr[-2000:]}")
    outcome: dict[str, Any] = json.loads(lines[-1])
    if "fatal" in outcome:
        raise RuntimeError(f"{module} failed: {outcome['fatal'][-2000:]}")
    return outcome


def submit_and_wait(
    system: System, workdir: Path, *, jobs: int, concurrency: int, body: dict[str, Any], budget_s: float
) -> Batch:
    """``jobs`` jobs of ``body``, ``concurrency`` callers each submitting then waiting, on a fresh
    deployment of ``system``; the client stops starting jobs after ``budget_s`` seconds."""
    with system.deploy(workdir, capacity=concurrency) as deployment:
        spec = {"jobs": jobs, "concurrency": concurrency, "body": body, "budget_s": budget_s,
                "options": deployment.options}  # fmt: skip
        # What the systems before this one wrote is still being written back to the disk; left to
        # the kernel, that writeback stalls this system's own fsyncs (W3's p99 went 3 -> 35-72 ms
        # for tarefa on SQLite right after the other systems' W2, and the floor's to 137 ms).
        os.sync()
        for group in deployment.groups:
            group.begin()
        outcome = run_client(deployment, spec, timeout=budget_s + 180)
        usage = measure(deployment.groups)
    usage["client"] = Usage(outcome["client"]["cpu_s"], outcome["client"]["peak_rss_kb"], 0)
    return Batch(system.key, outcome["records"], outcome["errors"], outcome["error_count"], usage)
