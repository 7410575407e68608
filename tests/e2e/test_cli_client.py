"""The client commands of the CLI, run as subprocesses against a real ``tarefa serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tarefa.client import Client


def tarefa(*args: str, url: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAREFA_URL": url or "http://127.0.0.1:9", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tarefa", *args], capture_output=True, text=True, env=env, timeout=60, input=stdin
    )


def host(name: str, address: str) -> str:
    return orjson.dumps({"name": name, "address": address}).decode()


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tarefa: "), done.stderr
    return lines[0]


def test_call_wait_success_prints_each_change_then_the_job(server: Any) -> None:
    done = tarefa("call", "POST", "/api/hosts", "--json", host("c1", "10.0.0.1"), "--wait", url=server.url)
    assert done.returncode == 0, done.stderr
    changes = [line.split() for line in done.stdout.splitlines() if line[:4].isdigit()]
    assert changes[0][1] == "queued" and changes[-1][1:3] == ["success", "100%"]
    assert "state      success" in done.stdout and '"name":"c1"' in done.stdout


def test_call_wait_failure_exits_1(server: Any) -> None:
    done = tarefa("call", "POST", "/api/hosts", "--json", host("c2", "192.0.2.1"), "-w", url=server.url)
    assert done.returncode == 1
    assert "error      host_unreachable:" in done.stdout


def test_call_json_output_keeps_stdout_one_document(server: Any, tmp_path: Path) -> None:
    body = tmp_path / "host.json"
    body.write_text(host("c3", "10.0.0.3"))
    done = tarefa("call", "POST", "/api/hosts", "--data", f"@{body}", "--wait", "-o", "json", url=server.url)
    assert done.returncode == 0, done.stderr
    job = orjson.loads(done.stdout)
    assert job["state"] == "success" and job["result"]["name"] == "c3"
    assert "success" in done.stderr.splitlines()[-1]  # the changes went to stderr


def test_call_without_wait_prints_the_queued_job_and_sync_calls_print_the_body(server: Any) -> None:
    submitted = tarefa("call", "post", "/api/hosts", "--json", host("c4", "10.0.0.4"), url=server.url)
    assert submitted.returncode == 0 and "state      queued" in submitted.stdout
    listed = tarefa("call", "GET", "/api/hosts", url=server.url)
    assert listed.returncode == 0 and "records" in orjson.loads(listed.stdout)


def test_http_errors_exit_2_with_one_line(server: Any) -> None:
    first = tarefa("call", "POST", "/api/hosts", "--json", host("c5", "10.0.0.5"), "-w", url=server.url)
    assert first.returncode == 0
    again = tarefa("call", "POST", "/api/hosts", "--json", host("c5", "10.0.0.5"), url=server.url)
    assert again.returncode == 2 and "409 host_exists" in one_line_error(again)
    unknown = tarefa("jobs", "show", "no-such-job", url=server.url)
    assert unknown.returncode == 2 and "404" in one_line_error(unknown)


def test_unreachable_server_exits_2_with_one_line() -> None:
    done = tarefa("jobs", "list", "--retry-for", "0.5", url="http://127.0.0.1:9")
    assert done.returncode == 2 and "127.0.0.1:9" in one_line_error(done) and done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--json", "{not json"), "--json is not valid JSON"),
        (("--data", "@/no/such/file.json"), "cannot read /no/such/file.json"),
        (("--data", "name=x"), "--data takes @FILE"),
        (("--json", "{}", "--data", "@-"), "not both"),
    ],
)
def test_bad_request_bodies_exit_2(args: tuple[str, ...], message: str) -> None:
    done = tarefa("call", "POST", "/api/hosts", *args)
    assert done.returncode == 2 and message in one_line_error(done)


def test_data_from_stdin(server: Any) -> None:
    done = tarefa("call", "POST", "/api/hosts", "--data", "@-", "-w", url=server.url, stdin=host("c6", "10.0.0.6"))
    assert done.returncode == 0 and "state      success" in done.stdout


def test_jobs_wait_timeout_exits_3(start_server: Any) -> None:
    slow = start_server(step_delay=5.0)
    with Client(slow.url) as client:
        job = client.submit("POST", "/api/hosts", {"name": "c7", "address": "10.0.0.7"})
    done = tarefa("jobs", "wait", job.id, "--timeout", "1", url=slow.url)
    assert done.returncode == 3 and "still" in one_line_error(done)


def test_jobs_list_show_cancel_delete(start_server: Any) -> None:
    slow = start_server(step_delay=2.0)
    with Client(slow.url) as client:
        job = client.submit("POST", "/api/hosts", {"name": "c8", "address": "10.0.0.8"})
    listed = tarefa("jobs", "list", "--state", "queued|running", "-o", "json", url=slow.url)
    assert [j["id"] for j in orjson.loads(listed.stdout)] == [job.id]
    table = tarefa("jobs", "list", "--operation", "host.register", url=slow.url)
    assert table.stdout.splitlines()[0].startswith("ID") and job.id in table.stdout
    cancelled = tarefa("jobs", "cancel", job.id, url=slow.url)
    assert cancelled.returncode == 0, cancelled.stderr
    waited = tarefa("jobs", "wait", job.id, url=slow.url)
    assert waited.returncode == 1 and "error      cancelled:" in waited.stdout
    shown = tarefa("jobs", "show", job.id, "-o", "json", url=slow.url)
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["state"] == "failure"
    deleted = tarefa("jobs", "delete", job.id, url=slow.url)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted job {job.id}"
    assert tarefa("jobs", "show", job.id, url=slow.url).returncode == 2


def test_usage_errors_exit_2() -> None:
    assert tarefa("jobs", "show").returncode == 2
    assert tarefa("jobs", "show", "x", "--output", "yaml").returncode == 2
