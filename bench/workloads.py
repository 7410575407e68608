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
import statistics
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
    """Each system's row. With ``rounds`` > 1 every system runs that many times, the systems in
    turn round after round (a drift of the machine falls on all of them), and each figure is the
    median of the rounds; the details under the table are the median round's (by jobs/s)."""
    rounds = params.get("rounds", 1)
    done: dict[str, list[tuple[dict[str, float | None], dict[str, Any]]]] = {s.key: [] for s in systems}
    failed: dict[str, str] = {}
    for index in range(rounds):
        for system in systems:
            if system.key in failed:
                continue
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
                failed[system.key] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                continue
            figures = base_figures(batch)
            done[system.key].append((figures, details_of(batch)))
            of = f" (round {index + 1} of {rounds})" if rounds > 1 else ""
            log.info("  %-20s %s%s", system.key, _summary(figures), of)
    rows = []
    for system in systems:
        row = Row(system.key, system.label, system.family, unavailable=failed.get(system.key))
        if row.unavailable is None:
            row.figures, row.details = _medians(done[system.key])
        rows.append(row)
    return rows


def _medians(
    rounds: list[tuple[dict[str, float | None], dict[str, Any]]],
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Each figure's median over the rounds, and the details of the round of median jobs/s (with
    every round's headline figures when there are several)."""
    if len(rounds) == 1:
        return rounds[0]
    figures: dict[str, float | None] = {}
    for name in rounds[0][0]:
        values = [f[name] for f, _ in rounds if f[name] is not None]
        figures[name] = statistics.median(values) if values else None
    ranked = sorted(rounds, key=lambda r: r[0]["jobs_per_s"] or 0.0)
    details = dict(ranked[len(ranked) // 2][1])
    details["rounds"] = [{k: f[k] for k in ("jobs_per_s", "p50_ms", "cpu_ms_per_job")} for f, _ in rounds]
    return figures, details


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
    if params.get("rounds", 1) > 1:
        setup += (f"; {params['rounds']} rounds, the systems in turn in each, every figure the median of "
                  "its system's rounds")  # fmt: skip
    workload = Workload(key, title.format(**params), setup, metrics)
    workload.rows = run_rows(systems, workdir, params)
    return workload
