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
from typing import Any

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


def _json_of(module: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", module, *args, "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_the_http_server_tool_measures_each_server() -> None:
    found = _json_of("bench.http_servers", "--servers", "uvicorn,uvicorn-tarefa", "--rounds", "1", "--seconds", "0.5",
                     "--held", "500")  # fmt: skip
    assert set(found["medians"]) == {"uvicorn", "uvicorn-tarefa"}
    for figures in found["medians"].values():
        assert figures["rps_c32"] > 0 and figures["server_us_per_request"] > 0 and figures["p50_us_c1"] > 0
        assert figures["kb_per_held"] > 0  # held requests take memory: a zero would mean none were held


def test_the_floor_tool_runs_tarefa_and_the_floor_on_w1_w2_and_w3() -> None:
    found = _json_of("bench.floors", "--rounds", "1", "--w1", "150", "--w2", "600", "--w3", "40")
    medians = found["medians"]
    bare = "tarefa server, bare aiohttp client"
    expected = {f"{system} {w}" for system in ("tarefa", "floor") for w in ("W1", "W2", "W3")}
    assert set(medians) == expected | {f"{bare} W1", f"{bare} W2"}
    for key, figures in medians.items():
        if key.endswith("W3"):  # after a sleep of 0.2-0.3 s, answered within a second of its end
            assert 0 < figures["notify_p50_ms"] <= figures["notify_p99_ms"] < 1000
        else:
            assert figures["jobs_per_s"] > 0 and figures["p50_ms"] > 0 and figures["server_cpu_ms_per_job"] > 0
            assert figures["client_cpu_ms_per_job"] > 0
