"""Small statistics and the shape of a result row, shared by the workloads and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


@dataclass(frozen=True)
class Metric:
    """One column of a workload's table."""

    key: str
    label: str
    higher_is_better: bool
    digits: int = 1


@dataclass
class Row:
    """One system's figures in one workload (or why it has none)."""

    system: str
    label: str
    family: str
    figures: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None


@dataclass
class Workload:
    """A workload's result: its table, its reference row and what to say under it."""

    key: str
    title: str
    setup: str
    metrics: list[Metric]
    rows: list[Row] = field(default_factory=list)
    reference: str = "tarefa-sqlite"
    notes: list[str] = field(default_factory=list)
    measured: str = ""  # when, and the machine's load average before and after

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        """A workload read back from ``benchmarks.json``."""
        metrics = [Metric(**m) for m in data["metrics"]]
        rows = [Row(**r) for r in data["rows"]]
        return cls(**{**data, "metrics": metrics, "rows": rows})
