"""The results as one picture: ``python -m bench.plot results.json out.png`` (matplotlib; the runner
runs it in ``bench/.venvs/plot``). One panel per question, tarefa's bars in blue, others in grey;
the last two draw tarefa against the best peer of the run, and PostgreSQL against embedded."""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib
from bench.stats import Workload
from bench.targets import comparisons

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

TAREFA = ("#1f5fbf", "#7ea6e0")
OTHER = ("#6b6b6b", "#bdbdbd")
TIMES = "\u00d7"  # multiplication sign


def title_of(results: dict[str, Any], key: str) -> str:
    workload = next((w for w in results["workloads"] if w["key"] == key), None)
    return "" if workload is None else str(workload["title"])


def rows_of(results: dict[str, Any], key: str) -> list[dict[str, Any]]:
    workload = next((w for w in results["workloads"] if w["key"] == key), None)
    return [] if workload is None else [r for r in workload["rows"] if not r["unavailable"]]


def merged(results: dict[str, Any], picks: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Rows by system across workloads: ``picks`` = (workload, metric, new key)."""
    by_system: dict[str, dict[str, Any]] = {}
    for workload, metric, key in picks:
        for row in rows_of(results, workload):
            entry = by_system.setdefault(row["system"], {**row, "figures": {}})
            entry["figures"][key] = row["figures"].get(metric)
    return list(by_system.values())


def hbars(ax: Any, rows: list[dict[str, Any]], series: list[tuple[str, str]], title: str, unit: str,
          log: bool = False) -> None:  # fmt: skip
    """Horizontal bars: one group per row, one bar per (metric key, legend label)."""
    rows = list(reversed(rows))
    height = 0.8 / max(1, len(series))
    for i, (key, name) in enumerate(series):
        values = [r["figures"].get(key) or 0.0 for r in rows]
        colors = [(TAREFA if r["family"] == "tarefa" else OTHER)[min(i, 1)] for r in rows]
        positions = [n + ((len(series) - 1) / 2 - i) * height for n in range(len(rows))]
        bars = ax.barh(positions, values, height=height, color=colors, label=name)
        for bar, value in zip(bars, values, strict=True):
            label = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {label}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(unit, fontsize=8)
    if log:
        ax.set_xscale("symlog", linthresh=1.0)  # log beyond 1, linear below: zeros stay drawable
    ax.margins(x=0.25)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)


def ratio_bars(ax: Any, names: list[str], ratios: list[float], goal: float, title: str, unit: str) -> None:
    """One bar per headline figure, a line at the goal; a bar right of it meets it."""
    names, ratios = list(reversed(names)), list(reversed(ratios))
    colors = [TAREFA[0] if r >= goal else "#c0392b" for r in ratios]
    bars = ax.barh(range(len(names)), ratios, color=colors)
    for bar, value in zip(bars, ratios, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}{TIMES}", va="center", fontsize=7)
    ax.axvline(goal, color="black", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(unit, fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}{TIMES}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    ax.margins(x=0.25)


def draw_ratios(ax_peer: Any, ax_pg: Any, results: dict[str, Any]) -> None:
    found = comparisons([Workload.from_dict(w) for w in results["workloads"]])
    peer = [(f"{c.headline.name} (vs {c.peer.label})", c.vs_peer) for c in found if c.vs_peer and c.peer]
    ratio_bars(ax_peer, [n for n, _ in peer], [r for _, r in peer], 1.0,
               "tarefa · SQLite against the best peer of this run — right of the line is better",
               "times better than the best peer (log)")  # fmt: skip
    pg = [(c.headline.name, c.pg_share) for c in found if c.pg_share]
    ratio_bars(ax_pg, [n for n, _ in pg], [r for _, r in pg], 0.5,
               "tarefa · PostgreSQL as a share of embedded — goal ≥ 0.5 (the line)",
               "PostgreSQL ÷ embedded (throughput; inverse for times)")  # fmt: skip


def draw(results: dict[str, Any], path: str) -> None:
    fig, axes = plt.subplots(4, 2, figsize=(16, 20))
    (a, b), (c, d), (e, f), (g, h) = axes
    throughput = merged(results, [("W1", "jobs_per_s", "w1"), ("W2", "jobs_per_s", "w2")])
    hbars(a, throughput, [("w1", "W1: one caller"), ("w2", "W2: concurrent callers")],
          "W1/W2 throughput, no-op jobs — higher is better", "jobs/s", log=True)  # fmt: skip
    hbars(b, rows_of(results, "W1"), [("p50_ms", "p50"), ("p99_ms", "p99")],
          "W1 latency, one caller, submit → seen done — lower is better", "ms", log=True)  # fmt: skip
    hbars(c, rows_of(results, "W3"), [("notify_p50_ms", "p50"), ("notify_p99_ms", "p99")],
          "W3 notify latency, job end → caller sees it — lower is better", "ms", log=True)  # fmt: skip
    hbars(d, rows_of(results, "W4"), [("wall_s", "wall s until all seen"), ("cpu_s", "CPU s, all processes")],
          title_of(results, "W4") + " — lower is better", "seconds")  # fmt: skip
    hbars(e, rows_of(results, "W5"), [("kb_per_wait", "KB per waiting request"),
                                      ("cpu_pct_waiting", "server CPU % while waiting")],
          title_of(results, "W5") + " — lower is better", "KB  /  % of a core", log=True)  # fmt: skip
    hbars(f, rows_of(results, "W6a") + rows_of(results, "W6b"),
          [("requests_per_change", "requests per visible change"),
           ("server_cpu_ms", "server CPU ms beyond running the jobs")],
          "W6 cost of waiting — lower is better\n(rows 1-3: one changing job; rows 4-5: many clients, "
          "unchanging jobs)", "requests per change  /  ms", log=True)  # fmt: skip
    draw_ratios(g, h, results)
    fig.suptitle(f"tarefa side by side (tarefa in blue) — {results['machine']['cores']} cores, "
                 f"Python {results['machine']['python']}, size {results['size']}, {results['started']}",
                 fontsize=12)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    with open(sys.argv[1]) as source:
        draw(json.load(source), sys.argv[2])
