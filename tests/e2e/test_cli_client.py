"""The client commands of the CLI, run as subprocesses against a real ``tarefa serve``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def test_unreachable_server_says_at_once_that_it_retries_then_exits_2() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "tarefa", "jobs", "list", "--retry-for", "3", "--url", "http://127.0.0.1:9"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        said_at = time.monotonic()
        rest = proc.stderr.read()
        assert proc.wait(30) == 2
    # --retry-for 3: the notice comes with the first failure, seconds before the CLI gives up
    assert time.monotonic() - said_at > 2.0, "the retry notice must come at once, not when giving up"
    assert first.startswith("tarefa: GET http://127.0.0.1:9/api/jobs") and "Connection refused" in first
    assert "retrying for up to 3 s" in first
    assert "failed: [Errno 111] Connection refused (gave up after" in rest and "Traceback" not in rest


def test_no_retry_means_one_line_and_no_attempt_count() -> None:
    done = tarefa("jobs", "show", "x", "--retry-for", "0")
    line = one_line_error(done)
    assert done.returncode == 2 and line.endswith("Connection refused"), line


def test_https_against_plain_http_is_not_retried_and_says_why(server: Any) -> None:
    started = time.monotonic()
    done = tarefa("jobs", "show", "x", url=server.url.replace("http://", "https://"))
    line = one_line_error(done)
    assert done.returncode == 2 and "the server does not speak TLS here: use http://" in line
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--url", "not-a-url"), {}, "tarefa: --url: 'not-a-url' is not an http:// or https:// URL"),
        ((), {"TAREFA_URL": "nope"}, "tarefa: TAREFA_URL: 'nope' is not an http:// or https:// URL"),
        (("--ca-cert", "/no/such.pem"), {}, "tarefa: --ca-cert: /no/such.pem is not a file"),
        ((), {"TAREFA_RETRY_FOR": "soon"}, "--retry-for / TAREFA_RETRY_FOR: Input should be a valid number"),
    ],
)
def test_a_bad_setting_names_where_it_came_from(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tarefa", "jobs", "show", "x", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TAREFA_URL": "http://127.0.0.1:9", **env},
        timeout=60,
    )
    assert done.returncode == 2 and message in one_line_error(done)


def test_options_before_or_after_the_command_env_and_config_file(server: Any, tmp_path: Path) -> None:
    with Client(server.url) as client:
        job = client.run("POST", "/api/hosts", {"name": "c9", "address": "10.0.0.9"})
    after = tarefa("jobs", "show", job.id, "--url", server.url, "-o", "json")
    before = tarefa("--url", server.url, "-o", "json", "jobs", "show", job.id)
    wins = tarefa("--url", "http://127.0.0.1:9", "jobs", "show", job.id, "--url", server.url, "-o", "json")
    for done in (after, before, wins):
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["id"] == job.id
    config = tmp_path / "config.toml"
    config.write_text(f'url = "{server.url}"\noutput = "json"\n')
    env = {k: v for k, v in os.environ.items() if k != "TAREFA_URL"}
    from_file = subprocess.run(
        [sys.executable, "-m", "tarefa", "jobs", "show", job.id],
        capture_output=True,
        text=True,
        env={**env, "TAREFA_CONFIG": str(config)},
        timeout=60,
    )
    assert from_file.returncode == 0 and orjson.loads(from_file.stdout)["state"] == "success"


def test_jobs_list_limit_and_nothing_matches(server: Any) -> None:
    with Client(server.url) as client:
        for n in range(3):
            client.run("POST", "/api/hosts", {"name": f"lim{n}", "address": "10.0.1.1"})
    limited = tarefa("jobs", "list", "--limit", "2", "-o", "json", url=server.url)
    assert limited.returncode == 0 and len(orjson.loads(limited.stdout)) == 2
    assert "showing the newest 2 jobs; --limit 0 shows all" in limited.stderr
    every = tarefa("jobs", "list", "--limit", "0", "-o", "json", url=server.url)
    assert len(orjson.loads(every.stdout)) >= 3 and every.stderr == ""
    none = tarefa("jobs", "list", "--operation", "no.such", url=server.url)
    assert none.returncode == 0 and none.stdout == "" and none.stderr.strip() == "no jobs match (operation=no.such)"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("serve", ["--store", "[default: sqlite:///./tarefa.db]", "--workers", "[default: 4]", "[default: 30]"]),
        ("worker", ["--concurrency", "[default: 4]", "--grace", "--lease", "[default: 30]"]),
        ("jobs list", ["--limit", "[default: 50]", "--url", "[default: http://127.0.0.1:8080]", "[default: 10]"]),
    ],
)
def test_help_shows_the_defaults(command: str, expected: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tarefa", *command.split(), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        timeout=60,
    )
    assert done.returncode == 0
    for text in expected:
        assert text in done.stdout, (text, done.stdout)
    if command == "serve":
        lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip("│ ").startswith("--")}
        assert "[default: 30]" in lines["--grace"] and "[default: 30]" in lines["--lease"]


def test_shell_completion_is_offered() -> None:
    done = tarefa("--help")
    assert "--install-completion" in done.stdout and "--show-completion" in done.stdout


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
    slow = start_server(step_delay=5.0)  # long enough to cancel it on a loaded machine
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
