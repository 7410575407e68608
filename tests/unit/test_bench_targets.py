"""The benchmark page's comparisons: tarefa against the best peer of the run, PostgreSQL against
embedded (issue 11 asks every figure to be read that way)."""

from __future__ import annotations

from bench.stats import Metric, Row, Workload
from bench.targets import DASH, TIMES, best_peers, check_targets, comparisons


def _workload(key: str, figures: dict[str, dict[str, float]]) -> Workload:
    families = {"tarefa-sqlite": "tarefa", "tarefa-sqlite-normal": "tarefa", "tarefa-postgres": "tarefa",
                "floor": "floor"}  # fmt: skip
    rows = [Row(system, system, families.get(system, "peer"), dict(values)) for system, values in figures.items()]
    return Workload(key, key, "", [Metric("p50_ms", "p50", False), Metric("jobs_per_s", "jobs/s", True)], rows)


def test_the_best_peer_is_the_best_non_tarefa_row_for_each_figure() -> None:
    w1 = _workload("W1", {
        "tarefa-sqlite": {"p50_ms": 2.0, "jobs_per_s": 500.0},
        "tarefa-sqlite-normal": {"p50_ms": 0.5, "jobs_per_s": 2000.0},  # never a peer
        "tarefa-postgres": {"p50_ms": 8.0, "jobs_per_s": 125.0},
        "celery": {"p50_ms": 1.0, "jobs_per_s": 400.0},
        "arq": {"p50_ms": 4.0, "jobs_per_s": 600.0},
    })  # fmt: skip
    found = {c.headline.metric: c for c in comparisons([w1])}
    latency, rate = found["p50_ms"], found["jobs_per_s"]
    assert latency.peer is not None and latency.peer.system == "celery"
    assert latency.vs_peer == 0.5  # twice as slow as the best peer: half as good
    assert latency.pg_share == 0.25  # four times embedded's latency
    assert rate.peer is not None and rate.peer.system == "arq"
    assert rate.vs_peer is not None and abs(rate.vs_peer - 500 / 600) < 1e-9
    assert rate.pg_share == 0.25
    table = "\n".join(best_peers([w1]))
    assert f"| W1 latency p50 ↓ | 2.00 | celery: 1.00 | 0.50{TIMES} | 8.00 | 0.25 (not met) |" in table
    goals = "\n".join(check_targets([w1]))
    assert "| W1 p50 ≤ 1 ms (embedded) | 2.00 ms | no |" in goals
    assert f"| W1 p50 below every peer (embedded) | 0.50{TIMES} better than the best peer (celery) | no |" in goals
    assert f"| W2 jobs/s above every peer (embedded) | not measured | {DASH} |" in goals


def test_a_figure_no_peer_measured_has_no_ratio() -> None:
    w2 = _workload("W2", {"tarefa-sqlite": {"jobs_per_s": 3200.0}, "floor": {"jobs_per_s": 9000.0}})
    (only,) = comparisons([w2])
    assert only.peer is None and only.vs_peer is None and only.pg_share is None
    assert f"| W2 jobs/s ↑ | 3,200.00 | {DASH} | {DASH} | {DASH} | {DASH} |" in "\n".join(best_peers([w2]))


def test_rounds_give_each_figure_its_median_and_the_median_rounds_details() -> None:
    from bench.workloads import _medians

    rounds = [
        ({"jobs_per_s": 100.0, "p50_ms": 9.0, "cpu_ms_per_job": 5.0, "notify_p50_ms": None}, {"jobs_done": 1}),
        ({"jobs_per_s": 300.0, "p50_ms": 3.0, "cpu_ms_per_job": 4.0, "notify_p50_ms": None}, {"jobs_done": 3}),
        ({"jobs_per_s": 200.0, "p50_ms": 4.0, "cpu_ms_per_job": 6.0, "notify_p50_ms": None}, {"jobs_done": 2}),
    ]
    figures, details = _medians(rounds)
    assert figures == {"jobs_per_s": 200.0, "p50_ms": 4.0, "cpu_ms_per_job": 5.0, "notify_p50_ms": None}
    assert details["jobs_done"] == 2  # the round of median jobs/s
    assert [r["jobs_per_s"] for r in details["rounds"]] == [100.0, 300.0, 200.0]
    assert _medians(rounds[:1]) == rounds[0]  # one round: as it is
