"""Event streams (SPEC §10) through real ``tarefa serve`` processes and real HTTP.

A job's stream from history to its terminal event; every job's stream with filters; heartbeats;
``Last-Event-ID`` resume after ``kill -9`` and after a graceful stop (each event exactly once);
ownership, the per-user limit (429) and bad resume points (400) with ``--users``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from secured import Secured, make_users_file, servers, start_secured
from sse import all_event_pages, frames, read_events, stream_headers

from conftest import ServerProcess

HEARTBEAT = "0.2"


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAREFA_STREAM_HEARTBEAT", HEARTBEAT)


@pytest.fixture
def started() -> Iterator[list[Secured]]:
    yield from servers()


def start_host(base: str, name: str, address: str = "10.0.0.1", **kw: Any) -> str:
    answer = httpx.post(f"{base}/api/hosts", json={"name": name, "address": address}, timeout=10, **kw)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job"]["id"])


def wait_terminal(base: str, job_ids: list[str], timeout: float = 30.0, **kw: Any) -> None:
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        while True:
            state = httpx.get(f"{base}/api/jobs/{job_id}", timeout=10, **kw).json()["record"]["state"]
            if state in ("success", "failure"):
                break
            assert time.monotonic() < deadline, f"job {job_id} is still {state}"
            time.sleep(0.05)


def json_history(base: str, job_id: str, **kw: Any) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/jobs/{job_id}/events", params={"max_records": "1000"}, timeout=10, **kw)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["records"])


def test_a_jobs_stream_sends_its_history_then_each_event_live_and_ends_after_the_terminal_one(
    start_server: Any,
) -> None:
    server: ServerProcess = start_server(step_delay=0.2)
    job_id = start_host(server.url, "s1")
    url = f"{server.url}/api/jobs/{job_id}/events"
    with httpx.Client(timeout=30) as client:
        streamed = read_events(client, url)  # returns only when the server ends the stream
        assert streamed == json_history(server.url, job_id)
        assert streamed[0]["state"] == "queued" and streamed[-1]["state"] == "success"
        assert len(streamed) >= 4 and [r["seq"] for r in streamed] == sorted({r["seq"] for r in streamed})
        # resumed in the middle: only what came after, by Last-Event-ID over after
        middle = streamed[2]["seq"]
        assert read_events(client, url, last_event_id=middle) == streamed[3:]
        assert read_events(client, url + f"?after={middle}") == streamed[3:]
        assert read_events(client, url + "?after=0", last_event_id=middle) == streamed[3:]
        # nothing left to send: 204 tells an EventSource not to reconnect
        ended = client.get(url, headers=stream_headers(streamed[-1]["seq"]))
        assert ended.status_code == 204 and ended.content == b""
        # without the Accept header it stays the JSON page
        assert client.get(url).json()["records"] == streamed


def test_the_stream_of_every_job_filters_by_state_and_operation_and_heartbeats_while_idle(
    start_server: Any,
) -> None:
    server: ServerProcess = start_server(step_delay=0.01)
    good, bad = start_host(server.url, "f1"), start_host(server.url, "f2", "192.0.2.7")
    wait_terminal(server.url, [good, bad])
    url = f"{server.url}/api/events"
    with httpx.Client(timeout=30) as client:
        every = all_event_pages(client, server.url)
        assert {r["job_id"] for r in every} == {good, bad}
        assert read_events(client, url, idle=1.0) == every
        failures = read_events(client, url + "?state=failure", idle=1.0)
        assert [(r["job_id"], r["state"]) for r in failures] == [(bad, "failure")]
        assert failures[0]["error"]["code"] == "host_unreachable"
        assert read_events(client, url + "?operation=cluster.deploy", idle=1.0) == []
        assert read_events(client, url + "?state=queued|success", idle=1.0) == [
            r for r in every if r["state"] in ("queued", "success")
        ]
        assert all_event_pages(client, server.url, state="failure") == failures
        # idle: comment lines at the heartbeat interval, nothing else
        with client.stream("GET", url, headers=stream_headers(every[-1]["seq"])) as response:
            began, comments = time.monotonic(), 0
            for frame in frames(response):
                assert frame.comment, frame
                comments += 1
                if comments == 3:
                    break
            assert time.monotonic() - began < 3.0
        # a live event reaches an open stream
        later: list[dict[str, Any]] = []
        reader = threading.Thread(
            target=lambda: later.extend(read_events(client, url, last_event_id=every[-1]["seq"], count=1))
        )
        reader.start()
        time.sleep(0.5)
        third = start_host(server.url, "f3")
        reader.join(10)
        assert [(r["job_id"], r["state"]) for r in later] == [(third, "queued")]
        # JSON pages: after and _links.next
        page = client.get(url, params={"max_records": "2"}).json()
        assert page["records"] == every[:2] and page["_links"]["next"]["href"].endswith(f"after={every[1]['seq']}")


def test_bad_resume_points_and_filters_are_400_and_an_unknown_job_404(server: ServerProcess) -> None:
    job_id = start_host(server.url, "b1")
    with httpx.Client(timeout=10) as client:
        for url in (f"{server.url}/api/jobs/{job_id}/events", f"{server.url}/api/events"):
            for bad in ("x", "-1", "1.5", "99999999999999999999", ""):
                answer = client.get(url, headers=stream_headers(**{"Last-Event-ID": bad}))
                assert answer.status_code == 400, (url, bad, answer.text)
                assert answer.json()["error"] == {
                    "code": "invalid_parameter",
                    "message": answer.json()["error"]["message"],
                    "target": "Last-Event-ID",
                }
            assert client.get(url, params={"after": "-3"}, headers=stream_headers()).status_code == 400
        for params in ({"state": "done"}, {"operation": "Bad Name"}, {"max_records": "0"}):
            answer = client.get(f"{server.url}/api/events", params=params)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_parameter", params
            streamed = client.get(f"{server.url}/api/events", params=params, headers=stream_headers())
            assert streamed.status_code == 400, params
        unknown = client.get(f"{server.url}/api/jobs/nope/events", headers=stream_headers())
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"


def _opened(client: httpx.Client, url: str, **kw: Any) -> int:
    """The status of a stream opened (and closed at once)."""
    with client.stream("GET", url, headers=stream_headers(), **kw) as response:
        return response.status_code


def _read_until_quiet(base: str, last: int, got: list[dict[str, Any]], per_connection: int) -> int:
    """Resume again and again with Last-Event-ID, ``per_connection`` events at a time, until a
    connection stays quiet; returns the last id."""
    with httpx.Client(timeout=30) as client:
        while True:
            records = read_events(client, f"{base}/api/events", last_event_id=last, count=per_connection, idle=1.0)
            got.extend(records)
            if not records:
                return last
            last = records[-1]["seq"]


def test_a_stream_cut_by_kill_9_resumes_on_the_restarted_server_with_every_event_once(
    start_server: Any,
) -> None:
    server: ServerProcess = start_server(step_delay=0.05)
    jobs = [start_host(server.url, f"k{n}") for n in range(4)]
    got: list[dict[str, Any]] = []
    with httpx.Client(timeout=30) as client:
        got += read_events(client, f"{server.url}/api/events", count=5)
        # kill -9 while a stream is open and jobs are running
        with client.stream("GET", f"{server.url}/api/events", headers=stream_headers(got[-1]["seq"])) as response:
            for frame in frames(response):
                if not frame.comment:
                    got.append(frame.record)
                if len(got) >= 9:
                    server.kill()
                    break
    server.restart()  # recovers the jobs the dead process was running
    jobs += [start_host(server.url, f"k{n}") for n in range(4, 6)]
    wait_terminal(server.url, jobs)
    _read_until_quiet(server.url, got[-1]["seq"], got, per_connection=3)
    with httpx.Client(timeout=30) as client:
        stored = all_event_pages(client, server.url)
    assert [r["seq"] for r in got] == [r["seq"] for r in stored]
    assert got == stored
    assert {r["job_id"] for r in stored} == set(jobs)


def test_a_graceful_stop_ends_open_streams_and_a_client_resumes_after_the_restart(start_server: Any) -> None:
    server: ServerProcess = start_server(step_delay=0.01)
    first = start_host(server.url, "g1")
    wait_terminal(server.url, [first])
    ended: dict[str, Any] = {}

    def follow() -> None:
        with httpx.Client(timeout=30) as client:
            began = time.monotonic()
            ended["records"] = read_events(client, f"{server.url}/api/events")
            ended["seconds"] = time.monotonic() - began

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(1.0)
    server.terminate()  # uvicorn re-raises the signal once it has stopped gracefully
    assert "Application shutdown complete" in server.log()
    reader.join(15)
    assert not reader.is_alive() and ended["seconds"] < 9  # ended by the stop, not by uvicorn's timeout
    got = ended["records"]
    server.restart()
    later = start_host(server.url, "g2")
    wait_terminal(server.url, [later])
    _read_until_quiet(server.url, got[-1]["seq"], got, per_connection=100)
    with httpx.Client(timeout=30) as client:
        assert got == all_event_pages(client, server.url)


def test_streams_follow_ownership_and_count_in_the_per_user_limit(tmp_path: Path, started: list[Secured]) -> None:
    users = make_users_file(tmp_path / "users.json")
    server = start_secured(
        tmp_path, "--users", str(users), "--max-waiting-per-user", "2", "--store", f"sqlite:///{tmp_path}/s.db"
    )
    started.append(server)
    alice, bob, root = (("alice", "alice-pw"), ("bob", "bob-pw"), ("root", "root-pw"))
    mine = start_host(server.url, "o1", auth=alice)
    theirs = start_host(server.url, "o2", auth=bob)
    wait_terminal(server.url, [mine], auth=alice)
    wait_terminal(server.url, [theirs], auth=bob)
    with httpx.Client(timeout=30) as client:
        job_url = f"{server.url}/api/jobs/{mine}/events"
        assert client.get(job_url, headers=stream_headers(), auth=bob).status_code == 404
        assert client.get(job_url, headers=stream_headers()).status_code == 401
        assert read_events(client, job_url, auth=alice) == json_history(server.url, mine, auth=alice)
        every = f"{server.url}/api/events"
        assert {r["job_id"] for r in read_events(client, every, idle=0.8, auth=bob)} == {theirs}
        assert {r["job_id"] for r in read_events(client, every, idle=0.8, auth=root)} == {mine, theirs}
        assert {r["job_id"] for r in all_event_pages(client, server.url, auth=alice)} == {mine}
        # two streams open: alice's third wait is refused, bob's is not
        with (
            client.stream("GET", every, headers=stream_headers(), auth=alice) as one,
            client.stream("GET", every, headers=stream_headers(), auth=alice) as two,
        ):
            assert one.status_code == two.status_code == 200
            refused = client.get(every, headers=stream_headers(), auth=alice)
            assert refused.status_code == 429 and refused.headers["Retry-After"]
            assert refused.json()["error"]["code"] == "too_many_waiting"
            poll = client.get(f"{server.url}/api/jobs/{mine}", params={"poll_timeout": "1"}, auth=alice)
            assert poll.status_code == 429  # streams and long polls share the limit
            with client.stream("GET", every, headers=stream_headers(), auth=bob) as other:
                assert other.status_code == 200
            metrics = client.get(f"{server.url}/metrics", auth=root).text
            assert "tarefa_event_streams_open 2.0" in metrics
        deadline = time.monotonic() + 5
        while _opened(client, every, auth=alice) == 429:
            assert time.monotonic() < deadline, "the closed streams still count"
