"""schemathesis against a live ``tarefa serve``, on SQLite and on PostgreSQL.

Every check of schemathesis but one (see ``schemathesis.toml``), with the coverage, fuzzing and
stateful phases, at a size that fits CI (a fixed seed, so that a run can be repeated): no 5xx, no
undocumented status code, no answer outside its schema. ``schemathesis.toml`` beside this file
says which answers the schema cannot express (and why).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_database import postgres_database

from conftest import ServerProcess, free_port

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 40  # per operation and phase: about half a minute per store on one core
SEED = 20261201


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tarefa.db"
        return
    with postgres_database("tarefa_schemathesis") as url:
        yield url


def test_schemathesis_finds_no_server_error_undocumented_status_or_schema_violation(store: str, tmp_path: Path) -> None:
    server = ServerProcess(
        args=["--store", store, "--step-delay", "0", "--workers", "2"],
        port=free_port(),
        log_path=tmp_path / "server.log",
    )
    server.start()
    report = tmp_path / "schemathesis.json"
    try:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
             f"{server.url}/openapi.json", "--checks", "all", "--exclude-checks", "ensure_resource_availability",
             "--max-examples", str(EXAMPLES), "--seed", str(SEED),
             "--workers", "1", "--request-timeout", "10", "--no-color",
             "--report", "json", "--report-json-path", str(report)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its cache goes there, not in the repo
        )  # fmt: skip
    finally:
        server.stop()
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(f"schemathesis on {store.split(':')[0]}: {cases['generated']} requests, {cases['with_failures']} failures")
    assert summary["complete"] and summary["operations"]["tested"] == summary["operations"]["total"], run.stdout
    assert summary["phases"]["stateful"]["status"] != "skip", run.stdout
    assert (summary["failures"], summary["errors"], run.returncode) == ([], [], 0), run.stdout[-6000:]
    assert "Traceback" not in server.log(), server.log()[-4000:]
