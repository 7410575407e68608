"""The results as a Markdown page: the machine, one table per workload, the targets.

In every table each figure comes with its ratio to the reference row measured in the same run
(tarefa embedded for W1-W5, long polls for W6): ``772 (1.71x)`` means 1.71 times the reference's
figure. Whatever follows the ``ANALYSIS_MARKER`` line in an existing page is kept when the page
is written again (hand-written analysis of the figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.stats import Metric, Row, Workload
from bench.targets import best_peers, check_targets

TIMES, DASH = "\u00d7", "\u2013"  # multiplication sign, en dash
ANALYSIS_MARKER = "<!-- Hand-written analysis below this line: kept when bench/run.py rewrites the page. -->"


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return DASH
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio_text(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference == 0:
        return ""
    ratio = value / reference
    shown = f"{ratio:.2f}" if ratio < 10 else f"{ratio:,.0f}"
    return f" ({shown}{TIMES})"


def cell(row: Row, metric: Metric, reference: Row | None) -> str:
    value = row.figures.get(metric.key)
    text = fmt(value, metric.digits)
    if reference is not None and row is not reference:
        text += ratio_text(value, reference.figures.get(metric.key))
    return text


def table(workload: Workload) -> list[str]:
    reference = next((r for r in workload.rows if r.system == workload.reference and not r.unavailable), None)
    arrows = [f"{m.label} {'↑' if m.higher_is_better else '↓'}" for m in workload.metrics]
    lines = ["| system | " + " | ".join(arrows) + " |", "|---" * (len(arrows) + 1) + "|"]
    for row in workload.rows:
        name = f"**{row.label}**" if row.family == "tarefa" else row.label
        if row.unavailable:
            lines.append(f"| {name} | {row.unavailable} |" + " |" * (len(arrows) - 1))
            continue
        lines.append(f"| {name} | " + " | ".join(cell(row, m, reference) for m in workload.metrics) + " |")
    return lines


def usage_notes(workload: Workload) -> list[str]:
    """Per-process CPU and memory, and errors, under the table."""
    notes = []
    for row in workload.rows:
        usage = row.details.get("usage")
        parts = []
        if usage:
            costs = (f"{role} {u['cpu_s']:.2f} CPU-s / {u['peak_mb']:.0f} MB" for role, u in usage.items())
            parts.append(", ".join(costs))
        if "jobs_done" in row.details:
            parts.append(f"{row.details['jobs_done']} jobs done")
        if row.details.get("errors"):
            parts.append(f"**{row.details['errors']} errors** ({'; '.join(row.details.get('first_errors', []))})")
        parts += [f"{k.replace('_', ' ')} {fmt(v, 0 if float(v).is_integer() else 2)}" for k, v in row.details.items()
                  if k in ("requests", "answered", "all_waiting_after_s", "window_s", "loadgen_cpu_s")]  # fmt: skip
        if row.details.get("rounds"):
            each = ", ".join(f"{r['jobs_per_s']:,.0f} jobs/s p50 {r['p50_ms']:.1f} ms" for r in row.details["rounds"])
            parts.append(f"rounds: {each} (the details above are the median round's)")
        if parts:
            notes.append(f"- {row.label}: " + "; ".join(parts))
    return notes


def gib(meminfo: str) -> str:
    """``24684084 kB`` (``/proc/meminfo``) as ``24 GiB``."""
    number, _, unit = meminfo.partition(" ")
    return f"{int(number) / 2**20:.0f} GiB" if unit == "kB" and number.isdigit() else meminfo


def machine_section(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return [
        f"- **Machine**: {m['cores']} cores ({m['cpu']}), {gib(m['memory'])} memory, Linux {m['kernel']}, "
        f"Python {m['python']}; loopback only.",
        *(
            f"- **Run** `{run['command']}`: started {run['started']}, took {run['duration_s'] / 60:.1f} min; "
            f"`uptime` load average (1/5/15 min) {run['load_before']} before, {run['load_after']} after."
            for run in results["runs"]
        ),
        "- The machine was shared with other work (other engineers' tests) while it ran: each table "
        "gives its own time and load; a workload whose figures looked disturbed was re-run (`--rerun`).",
        f"- **Open files**: {m['open_files_limit']}.",
        f"- **Versions**: {versions}.",
        f"- **Size**: `{results['size']}`.",
    ]


def render(results: dict[str, Any], workloads: list[Workload], plot_name: str | None) -> str:
    lines = [
        "# Benchmarks: tarefa side by side with the tools people would use instead",
        "",
        "Written by `python -m bench.run` (see bench/README.md): every figure below was measured on this "
        "machine, each with its baseline in the same run.",
        "",
        *machine_section(results),
        "",
        "Every figure is followed by its ratio to the reference row of its table, measured in the same run: "
        f"`772 (1.71{TIMES})` is 1.71 times the reference's figure. ↑ higher is better, ↓ lower is better. "
        "CPU is user + system time from `/proc/<pid>/stat` of every process involved (clock ticks of 10 ms); "
        "memory is the peak resident set (`VmHWM`) of the processes the run started, and the current "
        "proportional set size (`Pss`: shared pages divided among the processes that map them) of the "
        "shared Redis and PostgreSQL processes.",
        "",
    ]
    if plot_name:
        lines += [f"![Benchmark results]({plot_name})", ""]
    for workload in workloads:
        measured = f" Measured {workload.measured}." if workload.measured else ""
        lines += [f"## {workload.title}", "", f"Setup: {workload.setup}.{measured}", "", *table(workload), ""]
        lines += [*usage_notes(workload), *workload.notes, ""]
    lines += ["## tarefa against the best peer", "",
              "Each headline figure of tarefa embedded beside the best peer's of the same run (Celery, arq, "
              "the hand-written service), and tarefa on PostgreSQL as a share of embedded "
              "(its throughput ÷ embedded's, or embedded's latency ÷ its own).", "",
              *best_peers(workloads), ""]  # fmt: skip
    lines += ["## Targets", "", *check_targets(workloads), ""]
    return "\n".join(lines)


def write(path: Path, results: dict[str, Any], workloads: list[Workload], plot_name: str | None) -> None:
    kept = ""
    if path.exists() and ANALYSIS_MARKER in path.read_text():
        kept = path.read_text().split(ANALYSIS_MARKER, 1)[1]
    path.write_text(render(results, workloads, plot_name) + "\n" + ANALYSIS_MARKER + (kept or "\n"))
