"""The design goals of issue 5, checked against a run's figures (goals, not pass/fail tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.stats import Row, Workload

TIMES, DASH = "\u00d7", "\u2013"  # multiplication sign, en dash


@dataclass(frozen=True)
class Target:
    workload: str
    system: str
    metric: str
    goal: str
    met: Callable[[float], bool]
    unit: str = ""


TARGETS = [
    Target("W2", "tarefa-sqlite", "jobs_per_s", "W2 ≥ 3,000 jobs/s (embedded)", lambda v: v >= 3000, " jobs/s"),
    Target("W2", "tarefa-postgres", "jobs_per_s", "W2 ≥ 3,000 jobs/s (PostgreSQL)", lambda v: v >= 3000, " jobs/s"),
    Target("W3", "tarefa-sqlite", "notify_p99_ms", "W3 notify p99 ≤ 1 ms (embedded)", lambda v: v <= 1, " ms"),
    Target("W3", "tarefa-postgres", "notify_p99_ms", "W3 notify p99 ≤ 5 ms (PostgreSQL)", lambda v: v <= 5, " ms"),
    Target("W4", "tarefa-sqlite", "wall_s", "W4 ≤ 3.3 s wall (embedded)", lambda v: v <= 3.3, " s"),
    Target("W4", "tarefa-sqlite", "cpu_s", "W4 ≤ 2 CPU-s in all (embedded)", lambda v: v <= 2, " CPU-s"),
    Target("W4", "tarefa-postgres", "wall_s", "W4 ≤ 3.3 s wall (PostgreSQL)", lambda v: v <= 3.3, " s"),
    Target("W4", "tarefa-postgres", "cpu_s", "W4 ≤ 2 CPU-s in all (PostgreSQL)", lambda v: v <= 2, " CPU-s"),
    Target("W5", "tarefa-sqlite", "kb_per_wait", "W5 ≤ 8 KB per waiting request", lambda v: v <= 8, " KB"),
    Target(
        "W5",
        "tarefa-sqlite",
        "cpu_pct_waiting",
        "W5 ~0 CPU while waiting (≤ 1 % of a core)",
        lambda v: v <= 1,
        " % of a core",
    ),
    Target("W5", "tarefa-sqlite", "answer_all_s", "W5 all answered within 1 s", lambda v: v <= 1, " s"),
    Target("W5", "tarefa-postgres", "kb_per_wait", "W5 ≤ 8 KB per waiting request (PostgreSQL)",
           lambda v: v <= 8, " KB"),
    Target("W5", "tarefa-postgres", "answer_all_s", "W5 all answered within 1 s (PostgreSQL)", lambda v: v <= 1, " s"),
    Target("W6a", "long-polls", "requests_per_change", "W6 ≤ 1.05 requests per visible change", lambda v: v <= 1.05),
    Target("W6b", "long-polls", "server_ms_per_s", "W6 ~0 server CPU while clients wait on unchanging jobs",
           lambda v: v <= 1, " ms per s (goal ≤ 1)"),
    Target("W6b", "long-polls", "client_ms_per_s", "W6 ~0 client CPU while it waits on an unchanging job",
           lambda v: v <= 1, " ms per s (goal ≤ 1)"),
]  # fmt: skip


def _row(workloads: list[Workload], key: str, system: str) -> Row | None:
    for workload in workloads:
        if workload.key == key:
            return next((row for row in workload.rows if row.system == system and not row.unavailable), None)
    return None


def _cpu_ratio(workloads: list[Workload], method: str, factor: float) -> list[str]:
    long, other = _row(workloads, "W6a", "long-polls"), _row(workloads, "W6a", method)
    goal = f"W6 ≥ {factor:g}{TIMES} less server CPU than {method.replace('poll-', 'polls every ')}"
    if long is None or other is None:
        return [f"| {goal} | not measured | {DASH} |"]
    mine, theirs = long.figures["server_cpu_ms"] or 0.0, other.figures["server_cpu_ms"] or 0.0
    ratio = theirs / mine if mine > 0 else float("inf")
    shown = "∞ (long polls cost less than one clock tick)" if mine <= 0 else f"{ratio:.1f}{TIMES}"
    return [f"| {goal} | {shown} ({theirs:.0f} ms vs {mine:.0f} ms) | {'yes' if ratio >= factor else 'no'} |"]


def check_targets(workloads: list[Workload]) -> list[str]:
    lines = ["| goal | measured | met |", "|---|---|---|"]
    for target in TARGETS:
        row = _row(workloads, target.workload, target.system)
        value = None if row is None else row.figures.get(target.metric)
        if value is None:
            lines.append(f"| {target.goal} | not measured | {DASH} |")
            continue
        lines.append(f"| {target.goal} | {value:,.2f}{target.unit} | {'yes' if target.met(value) else 'no'} |")
    return lines + _cpu_ratio(workloads, "poll-1s", 4) + _cpu_ratio(workloads, "poll-0.1s", 40)
