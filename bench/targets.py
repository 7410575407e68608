"""The design goals of issues 5 and 11, checked against a run's figures (goals, not pass/fail tests).

Issue 11 asks each figure to be read against the best peer of the same run: :func:`best_peers`
puts tarefa's headline figures beside the best of Celery, arq and the hand-written service (a
row whose family is neither ``tarefa`` nor ``floor``), and tarefa on PostgreSQL beside tarefa
embedded."""

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
    Target("W1", "tarefa-sqlite", "p50_ms", "W1 p50 ≤ 1 ms (embedded)", lambda v: v <= 1, " ms"),
    Target("W2", "tarefa-sqlite", "jobs_per_s", "W2 ≥ 3,000 jobs/s (embedded)", lambda v: v >= 3000, " jobs/s"),
    Target("W2", "tarefa-postgres", "jobs_per_s", "W2 ≥ 3,000 jobs/s (PostgreSQL)", lambda v: v >= 3000, " jobs/s"),
    Target("W3", "tarefa-sqlite", "notify_p99_ms", "W3 notify p99 ≤ 1 ms (embedded)", lambda v: v <= 1, " ms"),
    Target("W3", "tarefa-postgres", "notify_p99_ms", "W3 notify p99 ≤ 5 ms (PostgreSQL)", lambda v: v <= 5, " ms"),
    Target("W4", "tarefa-sqlite", "wall_s", "W4 ≤ 3.3 s wall (embedded)", lambda v: v <= 3.3, " s"),
    Target("W4", "tarefa-sqlite", "cpu_s", "W4 ≤ 2 CPU-s in all (embedded)", lambda v: v <= 2, " CPU-s"),
    Target("W4", "tarefa-postgres", "wall_s", "W4 ≤ 3.3 s wall (PostgreSQL)", lambda v: v <= 3.3, " s"),
    Target("W4", "tarefa-postgres", "cpu_s", "W4 ≤ 2 CPU-s in all (PostgreSQL)", lambda v: v <= 2, " CPU-s"),
    Target("W4", "tarefa-sqlite", "notify_p99_ms", "W4 jobs seen within 0.3 s of their ends (notify p99, embedded)",
           lambda v: v <= 300, " ms"),
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


@dataclass(frozen=True)
class Headline:
    """One figure a user compares systems by: ``higher`` is better or lower is."""

    workload: str
    metric: str
    name: str
    higher: bool


HEADLINES = [
    Headline("W1", "p50_ms", "W1 latency p50", False),
    Headline("W1", "jobs_per_s", "W1 jobs/s", True),
    Headline("W2", "jobs_per_s", "W2 jobs/s", True),
    Headline("W3", "notify_p99_ms", "W3 notify p99", False),
    Headline("W4", "wall_s", "W4 wall s", False),
    Headline("W4", "cpu_s", "W4 CPU-s", False),
]
PEERS_EXCLUDED = ("tarefa", "floor")


def _workload(workloads: list[Workload], key: str) -> Workload | None:
    return next((w for w in workloads if w.key == key), None)


def best_peer(workload: Workload, metric: str, higher: bool) -> Row | None:
    """The peer with the best figure for ``metric``: Celery, arq or the hand-written service."""
    peers = [r for r in workload.rows if r.family not in PEERS_EXCLUDED and not r.unavailable
             and r.figures.get(metric) is not None]  # fmt: skip
    if not peers:
        return None
    pick = max if higher else min
    return pick(peers, key=lambda r: r.figures[metric])  # type: ignore[arg-type, return-value]


def advantage(mine: float, theirs: float, higher: bool) -> float:
    """How many times better ``mine`` is than ``theirs`` (above 1: better; below 1: worse)."""
    if higher:
        return mine / theirs if theirs else float("inf")
    return theirs / mine if mine else float("inf")


@dataclass(frozen=True)
class Comparison:
    """One headline figure: tarefa embedded, the best peer, tarefa on PostgreSQL."""

    headline: Headline
    tarefa: float
    peer: Row | None
    postgres: float | None

    @property
    def peer_value(self) -> float | None:
        return None if self.peer is None else self.peer.figures[self.headline.metric]

    @property
    def vs_peer(self) -> float | None:
        """How many times better than the best peer tarefa embedded is (below 1: worse)."""
        theirs = self.peer_value
        return None if theirs is None else advantage(self.tarefa, theirs, self.headline.higher)

    @property
    def pg_share(self) -> float | None:
        """PostgreSQL as a share of embedded: 0.5 is half the throughput, or twice the time."""
        return None if self.postgres is None else 1 / advantage(self.tarefa, self.postgres, self.headline.higher)


def comparisons(workloads: list[Workload]) -> list[Comparison]:
    """Per headline figure measured in this run: tarefa embedded, the best peer, PostgreSQL."""
    found = []
    for headline in HEADLINES:
        workload = _workload(workloads, headline.workload)
        mine = _row(workloads, headline.workload, "tarefa-sqlite")
        value = None if mine is None else mine.figures.get(headline.metric)
        if workload is None or value is None:
            continue
        pg = _row(workloads, headline.workload, "tarefa-postgres")
        pg_value = None if pg is None else pg.figures.get(headline.metric)
        found.append(Comparison(headline, value, best_peer(workload, headline.metric, headline.higher), pg_value))
    return found


def _or_dash(value: float | None, text: str) -> str:
    return DASH if value is None else text


def best_peers(workloads: list[Workload]) -> list[str]:
    """The table of tarefa against the best peer of the same run, figure by figure."""
    lines = [
        f"| figure | tarefa · SQLite | best peer | {TIMES} better than the best peer | tarefa · PostgreSQL "
        "| PostgreSQL ÷ embedded (goal ≥ 0.5) |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons(workloads):
        arrow = "↑" if c.headline.higher else "↓"
        peer = DASH if c.peer is None else f"{c.peer.label}: {c.peer_value:,.2f}"
        versus = _or_dash(c.vs_peer, f"{c.vs_peer or 0:.2f}{TIMES}")
        pg = _or_dash(c.postgres, f"{c.postgres or 0:,.2f}")
        share = _or_dash(c.pg_share, f"{c.pg_share or 0:.2f} ({'met' if (c.pg_share or 0) >= 0.5 else 'not met'})")
        lines.append(f"| {c.headline.name} {arrow} | {c.tarefa:,.2f} | {peer} | {versus} | {pg} | {share} |")
    return lines


def _ahead(workloads: list[Workload]) -> list[str]:
    """Issue 11: W1's p50 below every peer's, W2's jobs/s above every peer's."""
    found = {(c.headline.workload, c.headline.metric): c for c in comparisons(workloads)}
    lines = []
    for key, metric, goal in (("W1", "p50_ms", "W1 p50 below every peer (embedded)"),
                              ("W2", "jobs_per_s", "W2 jobs/s above every peer (embedded)")):  # fmt: skip
        c = found.get((key, metric))
        if c is None or c.vs_peer is None or c.peer is None:
            lines.append(f"| {goal} | not measured | {DASH} |")
            continue
        met = "yes" if c.vs_peer > 1 else "no"
        lines.append(f"| {goal} | {c.vs_peer:.2f}{TIMES} better than the best peer ({c.peer.label}) | {met} |")
    return lines


def check_targets(workloads: list[Workload]) -> list[str]:
    lines = ["| goal | measured | met |", "|---|---|---|"]
    for target in TARGETS:
        row = _row(workloads, target.workload, target.system)
        value = None if row is None else row.figures.get(target.metric)
        if value is None:
            lines.append(f"| {target.goal} | not measured | {DASH} |")
            continue
        lines.append(f"| {target.goal} | {value:,.2f}{target.unit} | {'yes' if target.met(value) else 'no'} |")
    return lines + _ahead(workloads) + _cpu_ratio(workloads, "poll-1s", 4) + _cpu_ratio(workloads, "poll-0.1s", 40)
