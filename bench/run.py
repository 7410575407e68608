"""tarefa side by side with the tools people would use instead — one command, one machine, one run.

    python -m bench.run [--size full|smoke] [--out docs] [--workloads W1,W2,...] [--systems KEY,...]

Measures tarefa (embedded on SQLite; on PostgreSQL with separate worker processes), Celery + Redis,
arq + Redis (at its default 0.5 s polls and at 10 ms) and a hand-written FastAPI + SQLite service
polled every 0.1 s and every 1 s, on the workloads W1-W6 (see bench/README.md), and writes
``benchmarks.md`` (tables, targets), ``benchmarks.json`` (every figure) and ``benchmarks.png`` into
``--out``. Celery, arq and matplotlib are installed with pip into ``bench/.venvs/``. A system that
cannot run here is reported as "not available: <reason>"; the run goes on without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine, report, services, venvs
from bench.following import waiting_workloads
from bench.held import Floor, floor_plan, handmade_plan, held_workload, tarefa_plan
from bench.procs import raise_fd_limit
from bench.stats import Row, Workload
from bench.systems.base import ROOT, System, bench_env
from bench.systems.handmade import Handmade
from bench.systems.redis_queues import ArqRedis, CeleryRedis
from bench.systems.tarefa_systems import TarefaEmbedded, TarefaPostgres
from bench.workloads import WORKLOADS, batch_workload

log = logging.getLogger("bench")

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "W1": {"jobs": 500, "concurrency": 1, "budget_s": 30, "rounds": 3},
        "W2": {"jobs": 3000, "concurrency": 32, "budget_s": 30, "rounds": 3},
        "W3": {"jobs": 200, "concurrency": 20, "seconds": 0.2, "jitter": 0.1, "budget_s": 60},
        "W4": {"jobs": 1000, "concurrency": 1000, "seconds": 3.0, "budget_s": 60},
        "W5": {"polls": 10_000, "jobs": 100, "lead_s": 30},
        "W6": {"seconds": 60, "every": 5, "quiet_clients": 100},
    },
    "smoke": {
        "W1": {"jobs": 20, "concurrency": 1, "budget_s": 2, "rounds": 2},
        "W2": {"jobs": 60, "concurrency": 8, "budget_s": 2},
        "W3": {"jobs": 10, "concurrency": 5, "seconds": 0.2, "jitter": 0.1, "budget_s": 3},
        "W4": {"jobs": 30, "concurrency": 30, "seconds": 1.0, "budget_s": 10},
        "W5": {"polls": 200, "jobs": 5, "lead_s": 6},
        "W6": {"seconds": 2, "every": 0.5, "quiet_clients": 5},
    },
}
ALL_WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6"]


FAST_LABEL = "tarefa · SQLite, synchronous=NORMAL (faster, not power-loss safe)"


def build_systems(redis: services.Redis | str) -> list[System]:
    return [
        TarefaEmbedded(),
        # the faster setting, reported beside (never the default): a commit may be lost on power loss
        TarefaEmbedded("tarefa-sqlite-normal", FAST_LABEL, synchronous="normal"),
        TarefaPostgres(),
        CeleryRedis(redis),
        ArqRedis(redis, 0.5, key="arq-0.5s", label="arq + Redis, default 0.5 s polls"),
        ArqRedis(redis, 0.01, key="arq-10ms", label="arq + Redis, 10 ms polls"),
        Handmade("handmade-0.1s", "FastAPI + SQLite by hand, polled every 0.1 s", 0.1),
        Handmade("handmade-1s", "FastAPI + SQLite by hand, polled every 1 s", 1.0),
    ]


def check_systems(systems: list[System]) -> dict[str, str]:
    """Prepare every system (venvs...) and return why some cannot run."""
    missing = {}
    for system in systems:
        log.info("preparing %s", system.key)
        reason = system.unavailable()
        if reason:
            log.warning("%s is not available: %s", system.key, reason)
            missing[system.key] = f"not available: {reason}"
    return missing


def with_missing(workload: Workload, systems: list[System], missing: dict[str, str]) -> Workload:
    """Put the systems that could not run back in their place, with their reason."""
    done = {row.system: row for row in workload.rows}
    rows = [done.get(s.key) or Row(s.key, s.label, s.family, unavailable=missing.get(s.key)) for s in systems]
    workload.rows = [row for row in rows if row.figures or row.unavailable]
    return workload


def run_workload(key: str, params: dict[str, Any], systems: list[System], missing: dict[str, str],
                 workdir: Path) -> list[Workload]:  # fmt: skip
    """Run one workload (W6 gives two tables), noting when and under what load."""
    log.info("%s: %s", key, params)
    started, load = time.strftime("%H:%M"), machine.load_average()
    try:
        workloads = _run_workload(key, params, systems, missing, workdir)
    except Exception as exc:  # one broken workload must not lose the others' figures
        log.exception("%s failed", key)
        workloads = [Workload(key, f"{key} · failed", f"{type(exc).__name__}: {str(exc)[:300]}", [])]
    for workload in workloads:
        workload.measured = f"{started}; load average {load} before, {machine.load_average()} after"
    return workloads


def _run_workload(key: str, params: dict[str, Any], systems: list[System], missing: dict[str, str],
                  workdir: Path) -> list[Workload]:  # fmt: skip
    ready = [s for s in systems if s.key not in missing]
    if key in WORKLOADS:
        return [with_missing(batch_workload(key, ready, workdir, params), systems, missing)]
    if key == "W5":
        plans = {"tarefa-sqlite": tarefa_plan, "tarefa-postgres": tarefa_plan, "handmade-1s": handmade_plan}
        parts: list[Any] = [(s, plans[s.key]) for s in ready if s.key in plans]
        parts.insert(sum(1 for s, _ in parts if s.family == "tarefa"), (Floor(), floor_plan))
        workload = held_workload(parts, workdir, params)
        shown = [s for s in systems if s.key in plans]
        return [with_missing(workload, [*shown[:-1], Floor(), *shown[-1:]], missing)]
    return waiting_workloads(workdir, params)


def draw(results_path: Path, png: Path) -> str | None:
    """Draw the plot in the plot venv; the reason if it cannot be drawn."""
    try:
        python = venvs.ensure("plot")
    except RuntimeError as exc:
        return str(exc)
    command = [str(python), "-m", "bench.plot", str(results_path), str(png)]
    done = subprocess.run(command, capture_output=True, text=True, env=bench_env(), check=False)
    return None if done.returncode == 0 else done.stderr.strip()[-500:]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write benchmarks.md/.json/.png")
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated, e.g. W1,W3")
    parser.add_argument("--systems", default="", help="comma-separated system keys (default: all)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (and the matplotlib venv)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: write benchmarks.md and .png again from benchmarks.json in --out",
    )
    parser.add_argument("--rerun", action="store_true",
                        help="re-run only --workloads and merge them into the existing results in --out")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.report_only:
        results = json.loads((args.out / "benchmarks.json").read_text())
        return write_outputs(args, results, [Workload.from_dict(w) for w in results["workloads"]])
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_fd_limit()
    started, clock, load_before = time.strftime("%Y-%m-%d %H:%M %Z"), time.monotonic(), machine.load_average()
    workdir = Path(tempfile.mkdtemp(prefix="tarefa-bench-"))
    workloads: list[Workload] = []
    with services.redis() as redis:
        systems = build_systems(redis)
        if args.systems:
            systems = [s for s in systems if s.key in args.systems.split(",")]
        missing = check_systems(systems)
        for key in args.workloads.split(","):
            workloads += run_workload(key, SIZES[args.size][key], systems, missing, workdir)
        described = machine.describe(redis, open_files)
    shutil.rmtree(workdir, ignore_errors=True)
    run = {"command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
           "started": started, "duration_s": time.monotonic() - clock,
           "load_before": load_before, "load_after": machine.load_average()}  # fmt: skip
    runs = [run]
    if args.rerun:
        runs, workloads = merge(args.out / "benchmarks.json", run, workloads)
    results = {"size": args.size, "runs": runs, "started": runs[0]["started"], "machine": described,
               "workloads": [dataclasses.asdict(w) for w in workloads]}  # fmt: skip
    return write_outputs(args, results, workloads)


def merge(path: Path, run: dict[str, Any], fresh: list[Workload]) -> tuple[list[dict[str, Any]], list[Workload]]:
    """The earlier runs and their workloads, with the re-run workloads in their place."""
    earlier = json.loads(path.read_text())
    redone = {w.key: w for w in fresh}
    merged = [redone.pop(w["key"]) if w["key"] in redone else Workload.from_dict(w) for w in earlier["workloads"]]
    return [*earlier["runs"], run], merged + list(redone.values())


def write_outputs(args: argparse.Namespace, results: dict[str, Any], workloads: list[Workload]) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "benchmarks.json"
    data.write_text(json.dumps(results, indent=1, default=str))
    png = args.out / "benchmarks.png"
    problem = "not asked for (--no-plot)" if args.no_plot else draw(data, png)
    if problem:
        log.warning("no plot: %s", problem)
    report.write(args.out / "benchmarks.md", results, workloads, None if problem else png.name)
    log.info("wrote %s, %s%s", args.out / "benchmarks.md", data, "" if problem else f", {png}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
