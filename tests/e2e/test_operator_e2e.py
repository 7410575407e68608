"""The operator's surface of real processes: JSON log lines with request and job ids, the
start-up line, /metrics of ``tarefa serve`` and of ``tarefa worker --metrics-port``."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from conftest import TAREFA, ServerProcess, free_port


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [orjson.loads(line) for line in lines]  # every line is JSON: orjson raises otherwise


def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def finish(server: ServerProcess, job_id: str) -> dict[str, Any]:
    record: dict[str, Any] = httpx.get(f"{server.url}/api/jobs/{job_id}").json()["record"]
    while record["state"] not in ("success", "failure"):
        params = {"poll_timeout": 5, "last_modified": record["last_modified"]}
        record = httpx.get(f"{server.url}/api/jobs/{job_id}", params=params, timeout=10).json()["record"]
    return record


def test_json_logs_carry_the_request_id_and_the_job_id(start_server: Any) -> None:
    server: ServerProcess = start_server("--log-format", "json", "--access-log", step_delay=0.01)
    response = httpx.post(f"{server.url}/api/hosts", json={"name": "h1", "address": "192.0.2.7"})
    job_id = response.json()["job"]["id"]
    assert finish(server, job_id)["error"]["code"] == "host_unreachable"
    rid = response.headers["request-id"]
    until(lambda: rid in server.log(), "the access line of the request")
    entries = json_lines(server.log())
    startup = [e for e in entries if e["message"].startswith("tarefa serving:")]
    assert len(startup) == 1
    for part in ("store sqlite:///", "4 worker(s)", f"API {server.url}/api", f"docs {server.url}/docs",
                 f"dashboard {server.url}/"):  # fmt: skip
        assert part in startup[0]["message"]
    access = [e for e in entries if e["logger"] == "uvicorn.access" and "POST /api/hosts" in e["message"]]
    assert [e["request_id"] for e in access] == [rid]
    requests = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert requests
    assert all(e.get("request_id") for e in requests)  # every request's line has its id
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error", "critical"}


def test_serve_exports_the_metric_families(start_server: Any) -> None:
    server: ServerProcess = start_server(step_delay=0.01)
    ids = [httpx.post(f"{server.url}/api/hosts", json={"name": f"h{i}", "address": "10.0.0.1"}).json()["job"]["id"]
           for i in range(3)]  # fmt: skip
    for job_id in ids:
        assert finish(server, job_id)["state"] == "success"
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
    for name in ("tarefa_jobs", "tarefa_job_duration_seconds", "tarefa_job_queue_seconds", "tarefa_long_polls_waiting",
                 "tarefa_event_streams_open", "tarefa_wakeup_seconds", "tarefa_jobs_recovered",
                 "tarefa_callbacks"):  # fmt: skip
        assert name in families, name
    jobs = {(s.labels["state"], s.labels["operation"]): s.value for s in families["tarefa_jobs"].samples}
    assert jobs == {("success", "host.register"): 3}
    counts = {s.labels["state"]: s.value for s in families["tarefa_job_duration_seconds"].samples
              if s.name.endswith("_count")}  # fmt: skip
    assert counts == {"success": 3}
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}


def test_worker_serves_metrics_on_its_port(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "worker.log"
    command = [*TAREFA, "worker", "--store", f"sqlite:///{tmp_path}/w.db", "--metrics-port", str(port),
               "--log-format", "json"]  # fmt: skip
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        until(lambda: "metrics at" in log_path.read_text(), "the worker's metrics line", timeout=30)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"tarefa_jobs", "tarefa_job_duration_seconds", "tarefa_jobs_recovered"} <= names
        assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
        entries = json_lines(log_path.read_text())
        assert any(e["message"].startswith("tarefa worker started: store sqlite") for e in entries)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
