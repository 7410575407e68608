"""``client.watch()``, ``client.events()`` and the CLI's ``jobs watch`` / ``events`` against real
``tarefa serve`` processes: the event stream, its resumption after ``kill -9`` of the server, and
the fallback to long polls against an application without streams."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from tarefa.client import AsyncClient, Client, JobEvent, JobState

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_STREAMS_APP = "tests.e2e.apps.nostreams:app"


def host(name: str, address: str = "10.0.0.1") -> dict[str, str]:
    return {"name": name, "address": address}


def history(url: str, job_id: str) -> list[dict[str, Any]]:
    """The job's stored events, from the JSON pages."""
    answer = httpx.get(f"{url}/api/jobs/{job_id}/events", params={"max_records": 1000}, timeout=10)
    assert answer.status_code == 200, answer.text
    records: list[dict[str, Any]] = answer.json()["records"]
    return records


def assert_exactly_the_history(seen: list[JobEvent], stored: list[dict[str, Any]]) -> None:
    assert [event.seq for event in seen] == [record["seq"] for record in stored]
    assert [dict(event.raw) for event in seen] == stored
    assert seen[-1].is_terminal and not any(event.is_terminal for event in seen[:-1])


def test_watch_yields_every_event_in_order_sync_and_async(server: Any) -> None:
    with Client(server.url) as client:
        job = client.submit("POST", "/api/hosts", host("w1"))
        seen = list(client.watch(job, timeout=60))
    assert_exactly_the_history(seen, history(server.url, job.id))
    assert [e.state for e in seen][:2] == [JobState.QUEUED, JobState.RUNNING] and seen[-1].state is JobState.SUCCESS

    async def watch_async() -> tuple[str, list[JobEvent]]:
        async with AsyncClient(server.url) as client:
            job = await client.submit("POST", "/api/hosts", host("w2", "192.0.2.1"))  # fails: unreachable
            return job.id, [event async for event in client.watch(job.id, timeout=60)]

    job_id, seen = asyncio.run(watch_async())
    assert_exactly_the_history(seen, history(server.url, job_id))
    assert seen[-1].state is JobState.FAILURE and seen[-1].error is not None


def test_watch_after_a_seq_starts_after_it_and_a_finished_job_is_replayed(server: Any) -> None:
    with Client(server.url) as client:
        job = client.run("POST", "/api/hosts", host("w3"), timeout=60)
        whole = list(client.watch(job))
        rest = list(client.watch(job, after=whole[1].seq))
        nothing = list(client.watch(job, after=whole[-1].seq))  # the server's 204: nothing left
    assert rest == whole[2:] and nothing == []


def test_watch_resumes_after_kill_9_and_restart_with_every_event_once(start_server: Callable[..., Any]) -> None:
    victim = start_server("--lease", "2", step_delay=1.0)
    seen: list[JobEvent] = []
    two = threading.Event()
    outcome: list[BaseException | None] = []

    def follow(job_id: str) -> None:
        try:
            with Client(victim.url, retry_for=60) as client:
                for event in client.watch(job_id, timeout=90):
                    seen.append(event)
                    if len(seen) >= 2:
                        two.set()
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    with Client(victim.url) as client:
        job = client.submit("POST", "/api/hosts", host("k1"))
    watcher = threading.Thread(target=follow, args=(job.id,))
    watcher.start()
    assert two.wait(20)
    victim.kill()  # kill -9 mid-stream: the job is running, its stream open
    time.sleep(1.0)
    victim.restart()
    watcher.join(90)
    assert not watcher.is_alive() and outcome == [None], outcome
    assert_exactly_the_history(seen, history(victim.url, job.id))
    assert len(seen) > 2, victim.log()


def test_watch_falls_back_to_long_polls_against_a_server_without_streams(
    start_server: Callable[..., Any], monkeypatch: Any
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    plain = start_server("--app", NO_STREAMS_APP, "--access-log")
    assert httpx.get(f"{plain.url}/api/events", headers={"Accept": "text/event-stream"}).status_code == 404
    with Client(plain.url) as client:
        job = client.submit("POST", "/api/steps", {"count": 4, "every": 0.3})
        seen = list(client.watch(job, timeout=60))

    async def watch_async() -> list[JobEvent]:
        async with AsyncClient(plain.url) as client:
            job = await client.submit("POST", "/api/steps", {"count": 2, "every": 0.3})
            return [event async for event in client.watch(job, timeout=60)]

    seen_async = asyncio.run(watch_async())
    for events in (seen, seen_async):
        assert all(event.seq is None for event in events)
        assert events[-1].state is JobState.SUCCESS
        times = [event.time for event in events]
        assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(times))
    assert [e.message for e in seen if e.message.startswith("Step")] == [f"Step {i} of 4" for i in range(1, 5)]
    assert '"GET /api/jobs/' in plain.log() and "poll_timeout=" in plain.log()


def test_events_follows_every_job_with_filters(server: Any) -> None:
    with Client(server.url) as client:
        first = client.run("POST", "/api/hosts", host("e1"), timeout=60)
        failed = client.run("POST", "/api/hosts", host("e2", "192.0.2.1"), timeout=60, raise_on_failure=False)
        ended = list(itertools.islice(client.events(state="success|failure"), 2))
        failures = list(itertools.islice(client.events(state="failure", operation="host.register"), 1))
        later = client.submit("POST", "/api/hosts", host("e3"))
        resumed = next(client.events(after=ended[-1].seq, state="success"))
    assert [(e.job_id, e.state) for e in ended] == [(first.id, JobState.SUCCESS), (failed.id, JobState.FAILURE)]
    assert [e.job_id for e in failures] == [failed.id]
    assert resumed.job_id == later.id and resumed.seq is not None and resumed.seq > ended[-1].seq  # type: ignore[operator]


# -- the CLI --------------------------------------------------------------------------------------


def tarefa(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAREFA_URL": url, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "tarefa", *args], capture_output=True, text=True, env=env, timeout=90)


def test_cli_jobs_watch_prints_one_line_per_event_and_exits_like_wait(server: Any) -> None:
    with Client(server.url) as client:
        good = client.submit("POST", "/api/hosts", host("cw1"))
        bad = client.submit("POST", "/api/hosts", host("cw2", "192.0.2.1"))
    done = tarefa("jobs", "watch", "--", good.id, url=server.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    stored = history(server.url, good.id)
    assert len(lines) == len(stored) and all(f"#{r['seq']}" in line for r, line in zip(stored, lines, strict=True))
    assert "success" in lines[-1] and "queued" in lines[0]
    failed = tarefa("jobs", "watch", "--json", "--", bad.id, url=server.url)
    assert failed.returncode == 1, failed.stderr
    assert [orjson.loads(line) for line in failed.stdout.strip().splitlines()] == history(server.url, bad.id)
    missing = tarefa("jobs", "watch", "no-such-job", url=server.url)
    assert missing.returncode == 2 and "404" in missing.stderr


def test_cli_events_with_filters_and_count(server: Any) -> None:
    with Client(server.url) as client:
        job = client.run("POST", "/api/hosts", host("ce1"), timeout=60)
    done = tarefa(
        "events", "--state", "success", "--operation", "host.register", "-n", "1", "-o", "json", url=server.url
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    assert orjson.loads(line)["job_id"] == job.id and orjson.loads(line)["state"] == "success"
    bad = tarefa("events", "--state", "paused", "-n", "1", url=server.url)
    assert bad.returncode == 2 and "400" in bad.stderr
