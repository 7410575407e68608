"""The benchmark runner at smoke size, so that it never rots (full runs are manual: bench/README.md).

Runs ``python -m bench.run --size smoke`` as a subprocess into a temporary directory: every
workload, every system that can be installed here (Celery and arq get their venvs under
``bench/.venvs/`` with pip), the table and the plot.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = {"W1", "W2", "W3", "W4", "W5", "W6a", "W6b"}


def test_bench_runner_completes_and_writes_its_table(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--size", "smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    table = (tmp_path / "benchmarks.md").read_text()
    assert "| **tarefa · SQLite, embedded** |" in table
    assert "## Targets" in table
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {w["key"] for w in results["workloads"]} == WORKLOADS, done.stderr[-3000:]
    for workload in results["workloads"]:
        rows = {row["system"]: row for row in workload["rows"]}
        assert workload["reference"] in rows, (workload["key"], workload["setup"], done.stderr[-3000:])
        reference = rows[workload["reference"]]
        assert reference["figures"] and not reference["unavailable"], (workload["key"], reference)
        broken = [
            (key, row["unavailable"]) for key, row in rows.items() if (row["unavailable"] or "").startswith("failed")
        ]
        assert not broken, (workload["key"], broken)
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000
    assert elapsed < 400, f"the smoke run took {elapsed:.0f} s"
