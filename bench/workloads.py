"""W1-W4: batches of jobs run through every system by its own client (see ``systems.base``).

- W1: one caller, sequential submit-then-wait of no-op jobs: jobs/s, latency p50/p99.
- W2: 32 callers at once, no-op jobs: jobs/s, latency p50/p99.
- W3: 20 callers, jobs sleeping 0.2 s plus a fixed pseudo-random jitter of up to 0.1 s:
  notify latency (when the caller sees the end - when the job ended, same clock).
- W4: 1,000 callers at once, each waiting for its own 3 s job: wall time until all are seen,
  CPU seconds and peak memory of every process involved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import Metric, Row, Workload, ms, percentile
from bench.systems.base import Batch, System, submit_and_wait

log = logging.getLogger("bench")

THROUGHPUT = [
    Metric("jobs_per_s", "jobs/s", True, 0),
    Metric("p50_ms", "latency p50 ms", False, 1),
    Metric("p99_ms", "latency p99 ms", False, 1),
    Metric("cpu_ms_per_job", "CPU ms/job, all processes", False, 2),
]
NOTIFY = [
    Metric("notify_p50_ms", "notify p50 ms", False, 2),
    Metric("notify_p99_ms", "notify p99 ms", False, 2),
    Metric("cpu_ms_per_job", "CPU ms/job, all processes", False, 2),
]
MANY_WAITERS = [
    Metric("wall_s", "wall s until all seen", False, 2),
    Metric("cpu_s", "CPU s, all processes", False, 2),
    Metric("peak_mb", "peak MB, all processes", False, 0),
]


def body_of(params: dict[str, Any]) -> dict[str, Any]:
    if "seconds" not in params:
        return {"kind": "noop"}
    return {"kind": "sleep", "seconds": params["seconds"], "jitter": params.get("jitter", 0.0)}


def base_figures(batch: Batch) -> dict[str, float | None]:
    done = len(batch.records)
    return {
        "jobs_per_s": done / batch.wall if batch.wall else None,
        "p50_ms": ms(percentile(batch.latencies, 0.5)),
        "p99_ms": ms(percentile(batch.latencies, 0.99)),
        "notify_p50_ms": ms(percentile(batch.notify_latencies, 0.5)),
        "notify_p99_ms": ms(percentile(batch.notify_latencies, 0.99)),
        "cpu_ms_per_job": batch.total.cpu_s * 1000 / done if done else None,
        "wall_s": batch.wall,
        "cpu_s": batch.total.cpu_s,
        "peak_mb": batch.total.peak_rss_kb / 1024,
    }


def details_of(batch: Batch) -> dict[str, Any]:
    return {
        "jobs_done": len(batch.records),
        "errors": batch.error_count,
        "first_errors": batch.errors[:3],
        "usage": {role: {"cpu_s": u.cpu_s, "peak_mb": u.peak_rss_kb / 1024} for role, u in batch.usage.items()},
    }


def run_rows(systems: Sequence[System], workdir: Path, params: dict[str, Any]) -> list[Row]:
    rows = []
    for system in systems:
        row = Row(system.key, system.label, system.family)
        try:
            batch = submit_and_wait(
                system,
                workdir,
                jobs=params["jobs"],
                concurrency=params["concurrency"],
                body=body_of(params),
                budget_s=params["budget_s"],
            )
        except Exception as exc:
            log.exception("%s failed", system.key)
            row.unavailable = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        else:
            row.figures, row.details = base_figures(batch), details_of(batch)
            log.info("  %-20s %s", system.key, _summary(row.figures))
        rows.append(row)
    return rows


def _summary(figures: dict[str, float | None]) -> str:
    shown = {k: round(v, 2) for k, v in figures.items() if v is not None}
    return " ".join(f"{k}={v}" for k, v in shown.items())


WORKLOADS: dict[str, tuple[str, list[Metric], str]] = {
    "W1": ("W1 · one caller, sequential submit-then-wait (no-op jobs)", THROUGHPUT, "no-op jobs"),
    "W2": ("W2 · {concurrency:,} concurrent callers (no-op jobs)", THROUGHPUT, "no-op jobs"),
    "W3": ("W3 · notify latency: job end → caller sees it", NOTIFY, "jobs of {seconds} s + jitter 0..{jitter} s"),
    "W4": (
        "W4 · {concurrency:,} callers each waiting for its own {seconds:g} s job",
        MANY_WAITERS,
        "jobs of {seconds:g} s",
    ),
}


def batch_workload(key: str, systems: Sequence[System], workdir: Path, params: dict[str, Any]) -> Workload:
    title, metrics, what = WORKLOADS[key]
    setup = (f"{params['jobs']:,} {what.format(**params)}, {params['concurrency']:,} caller(s) at once; "
             f"a caller starts no new job after {params['budget_s']:g} s")  # fmt: skip
    workload = Workload(key, title.format(**params), setup, metrics)
    workload.rows = run_rows(systems, workdir, params)
    return workload
