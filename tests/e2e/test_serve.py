"""``tarefa serve`` as a real process over real HTTP: a crash and a restart, a graceful stop, long polls,
the offline API docs, the error bodies and the ``request-id`` header, and the loopback-only rule.

The crash and stop tests serve ``tests/e2e/apps/runlog.py``, whose jobs write every start to a run
log (fsync'd) so that the test can count how many times each job ran, even across a ``kill -9``.
"""

from __future__ import annotations

import email.utils
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from job_polling import TERMINAL, follow, read_job

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.apps.runlog:app"
RUNLOG_ENV = "TAREFA_TEST_RUNLOG"

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

StartServer = Callable[..., Any]

# -- helpers ------------------------------------------------------------------------------------


def client_for(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=httpx.Timeout(90.0, connect=5.0))


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a precondition of the test (never used as the assertion itself)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


def submit(client: httpx.Client, kind: str, **work: float) -> dict[str, Any]:
    answer = client.post(f"/api/{kind}", json=work)
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()["job"]
    assert answer.headers["location"] == f"/api/jobs/{job['id']}"
    return job


def starts(runlog: Path) -> Counter[str]:
    """How many times each job started, by job id."""
    return Counter(runlog.read_text().split())


def outcome(job: dict[str, Any]) -> tuple[str, str | None]:
    return job["state"], (job.get("error") or {}).get("code")


def assert_error_body(answer: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "target"}, error
    assert SNAKE_CASE.match(error["code"]), error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture
def apps_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started after this fixture can import ``tests.e2e.apps``."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def runlog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apps_importable: None) -> Path:
    """The run log of the test app (servers started after this fixture write to it)."""
    path = tmp_path / "runlog.txt"
    path.touch()
    monkeypatch.setenv(RUNLOG_ENV, str(path))
    return path


# -- kill -9 and restart -------------------------------------------------------------------


def test_kill_9_and_restart_ends_every_accepted_job_and_reruns_only_retry_safe_ones(
    start_server: StartServer, runlog: Path
) -> None:
    server = start_server("--app", APP, "--workers", "2")
    short = {"seconds": 0.3, "step": 0.1}
    long = {"seconds": 6.0, "retry_seconds": 0.3, "step": 0.1}
    # Claimed in creation order by 2 workers: the two short jobs end, then the two long ones run
    # (and are running at the kill), and the eight after them are still queued.
    plan = [("once", short), ("retryable", short), ("once", long), ("retryable", long)]
    plan += [(kind, short) for kind in ("once", "retryable") * 4]
    with client_for(server) as client:
        kinds = {submit(client, kind, **work)["id"]: kind for kind, work in plan}
        wait_until(lambda: len(starts(runlog)) >= 4, "both workers run a long job")
        server.kill()
        killed_at = datetime.now(UTC)
        started_before_kill = starts(runlog)
        server.restart()
        # a restart on the embedded store recovers at once, without waiting for leases to run out
        ended = {job_id: follow(client, read_job(client, job_id), timeout=20) for job_id in kinds}
    ran = starts(runlog)

    assert set(ran) <= set(kinds), "the run log names a job that never got a 202"
    queued_at_kill = [job_id for job_id in kinds if job_id not in started_before_kill]
    ended_before_kill = [
        job_id
        for job_id in started_before_kill
        if ended[job_id]["end_time"] is not None and moment(ended[job_id]["end_time"]) < killed_at
    ]
    running_at_kill = [job_id for job_id in started_before_kill if job_id not in ended_before_kill]
    # the scenario the test is about did happen
    assert sorted(kinds[job_id] for job_id in running_at_kill) == ["once", "retryable"], running_at_kill
    assert len(ended_before_kill) == 2 and len(queued_at_kill) == 8

    expected: dict[str, tuple[tuple[str, str | None], int]] = {}
    for job_id in queued_at_kill + ended_before_kill:
        expected[job_id] = (("success", None), 1)
    for job_id in running_at_kill:
        if kinds[job_id] == "once":
            expected[job_id] = (("failure", "worker_lost"), 1)
        else:
            expected[job_id] = (("success", None), 2)
    actual = {job_id: (outcome(job), ran[job_id]) for job_id, job in ended.items()}
    assert actual == expected
    for job_id in running_at_kill:
        if kinds[job_id] == "retryable":
            assert ended[job_id]["result"] == {"job": job_id, "attempt": 2}
    assert all(ran[job_id] <= 1 for job_id, kind in kinds.items() if kind == "once")


def test_kill_9_while_jobs_are_being_submitted_loses_no_accepted_job(start_server: StartServer, runlog: Path) -> None:
    server = start_server("--app", APP, "--workers", "2")
    accepted: list[tuple[str, str]] = []
    refused: list[str] = []

    def submit_until_the_server_dies(kind: str) -> None:
        with client_for(server) as own:
            while True:
                try:
                    answer = own.post(f"/api/{kind}", json={"seconds": 0.05, "step": 0.05})
                except httpx.TransportError:
                    return  # killed: an answer that never came promised nothing
                if answer.status_code == 202:
                    accepted.append((answer.json()["job"]["id"], kind))
                else:
                    refused.append(answer.text)

    with ThreadPoolExecutor(max_workers=4) as pool:
        submitters = [pool.submit(submit_until_the_server_dies, kind) for kind in ("once", "retryable") * 2]
        wait_until(lambda: len(accepted) >= 30 or bool(refused), "30 jobs were accepted")
        server.kill()
        for submitter in submitters:
            submitter.result(timeout=30)
    assert refused == []
    started_before_kill = starts(runlog)
    server.restart()
    with client_for(server) as client:
        ended = {job_id: follow(client, read_job(client, job_id), timeout=20) for job_id, _ in accepted}
    ran = starts(runlog)

    # A job claimed just before the kill may be `running` in the store before its operation wrote
    # its first line: it counts as started (at most once), so its run log may hold 0 lines.
    for job_id, kind in accepted:
        job, before, total = ended[job_id], started_before_kill[job_id], ran[job_id]
        assert total - before <= 1, (job, before, total)
        if kind == "once" and outcome(job) == ("failure", "worker_lost"):
            assert total == before <= 1, (job, before, total)  # not run again after the restart
        else:
            assert outcome(job) == ("success", None), job
            assert 1 <= total <= job["result"]["attempt"], (job, total)
    assert all(ran[job_id] <= 1 for job_id, kind in accepted if kind == "once")


# -- graceful stop (SIGTERM) ---------------------------------------------------------------


def _long_poll(url: str, job: dict[str, Any]) -> tuple[httpx.Response, float]:
    with httpx.Client(base_url=url, timeout=httpx.Timeout(90.0, connect=5.0)) as client:
        answer = client.get(
            f"/api/jobs/{job['id']}", params={"poll_timeout": 60, "last_modified": job["last_modified"]}
        )
        return answer, time.monotonic()


def test_sigterm_answers_long_polls_at_once_lets_short_jobs_finish_and_releases_the_rest(
    start_server: StartServer, runlog: Path
) -> None:
    grace = 4.0
    server = start_server("--app", APP, "--workers", "3", "--grace", str(grace))
    with client_for(server) as client:
        short = submit(client, "once", seconds=2.5, step=0.1)  # ends within the grace period
        # one progress report, then quiet for longer than the grace period
        long_once = submit(client, "once", seconds=60, step=60)
        long_retry = submit(client, "retryable", seconds=60, retry_seconds=0.2, step=60)
        queued = submit(client, "once", seconds=0.2)  # no worker is free for it
        wait_until(lambda: len(starts(runlog)) == 3, "three jobs run")
        for job in (long_once, long_retry):
            wait_until(lambda job=job: read_job(client, job["id"])["message"].startswith("Step 1 of 1"), "reported")
        quiet = {job["id"]: read_job(client, job["id"]) for job in (long_once, queued)}
        with ThreadPoolExecutor(max_workers=2) as pool:
            polls: dict[str, Future[tuple[httpx.Response, float]]] = {
                job_id: pool.submit(_long_poll, server.url, job) for job_id, job in quiet.items()
            }
            time.sleep(0.5)  # let both requests reach the server
            assert not any(poll.done() for poll in polls.values()), "a long poll on an unchanging job answered"
            assert read_job(client, short["id"])["state"] == "running", "the short job ended before the stop"
            signalled = time.monotonic()
            exit_code = server.terminate(timeout=60)
            exited = time.monotonic()
            stopped_at = datetime.now(UTC)
            answers = {job_id: poll.result(timeout=5) for job_id, poll in polls.items()}

        assert exit_code in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises the signal once stopped
        for job_id, (answer, answered) in answers.items():
            assert answer.status_code == 200, answer.text
            assert answer.json()["record"] == quiet[job_id]  # the job as it is, unchanged
            assert answered - signalled < 2.0, f"the long poll was answered {answered - signalled:.1f} s after SIGTERM"
        # it waited for the grace period (two jobs outlast it), then released them at once
        assert grace <= exited - signalled < grace + 6.0, exited - signalled

        server.restart()
        ended = {
            job["id"]: follow(client, read_job(client, job["id"])) for job in (short, long_once, long_retry, queued)
        }
    ran = starts(runlog)

    assert {job_id: (outcome(job), ran[job_id]) for job_id, job in ended.items()} == {
        short["id"]: (("success", None), 1),
        long_once["id"]: (("failure", "worker_lost"), 1),
        long_retry["id"]: (("success", None), 2),
        queued["id"]: (("success", None), 1),
    }
    # the short job finished and the unsafe one was released by the stopping process, not at restart
    assert moment(ended[short["id"]]["end_time"]) < stopped_at
    assert moment(ended[long_once["id"]]["end_time"]) < stopped_at
    # no new job was taken during the stop
    assert moment(ended[queued["id"]]["start_time"]) > stopped_at
    assert ended[long_retry["id"]]["result"] == {"job": long_retry["id"], "attempt": 2}


CONFIGURED_APP = "tests.e2e.apps.configured:app"  # Tarefa(workers=1, grace_seconds=1.5)


def test_serve_app_keeps_its_own_worker_count_unless_workers_is_given(
    start_server: StartServer, apps_importable: None
) -> None:
    server = start_server("--app", CONFIGURED_APP)  # no --workers
    with client_for(server) as client:
        first = client.post("/api/naps", params={"seconds": 60}).json()["job"]
        second = client.post("/api/naps", params={"seconds": 60}).json()["job"]
        wait_until(lambda: read_job(client, first["id"])["message"] == "Napping", "the first job runs")
        assert read_job(client, second["id"])["state"] == "queued", "the application asked for one worker"


def test_serve_app_keeps_its_own_grace_period_unless_grace_is_given(
    start_server: StartServer, apps_importable: None
) -> None:
    server = start_server("--app", CONFIGURED_APP)  # no --grace
    with client_for(server) as client:
        job = client.post("/api/naps", params={"seconds": 60}).json()["job"]
        wait_until(lambda: read_job(client, job["id"])["message"] == "Napping", "the job runs")
        signalled = time.monotonic()
        try:
            server.terminate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM: still stopping after 10 s, not after the application's 1.5 s grace period")
    assert time.monotonic() - signalled < 1.5 + 6.0


# -- an idle server sleeps; the date header is the answer's second --------------------------


def _main_thread_wakes(pid: int) -> int:
    """How many times the process's main thread has blocked and woken (voluntary switches)."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_an_idle_server_does_not_wake_and_its_date_header_is_never_stale(start_server: StartServer) -> None:
    server = start_server()
    assert server.proc is not None
    with client_for(server) as client:
        client.get("/healthz")
    time.sleep(1.5)  # the start and the request settle: the idle count begins after them
    before = _main_thread_wakes(server.proc.pid)
    time.sleep(4.0)
    woke = _main_thread_wakes(server.proc.pid) - before
    # uvicorn's loop woke 10 times a second (40 here) and the descriptor watcher once (4); left:
    # at most one safety-net poll of the callback dispatcher (every 5 s), a few wakes each.
    assert woke <= 8, f"the idle server's main thread woke {woke} times in 4 s"
    with client_for(server) as client:
        for _ in range(6):  # across several second boundaries
            before_s = time.time()
            answer = client.get("/healthz")
            after_s = time.time()
            stamp = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
            assert int(before_s) <= stamp <= after_s, (before_s, answer.headers["date"], after_s)
            time.sleep(0.35)
    asked = time.monotonic()
    assert server.terminate() in (0, -signal.SIGTERM)
    assert time.monotonic() - asked < 5, "a signal no longer stops the sleeping server at once"


# -- long polls ----------------------------------------------------------------------------


def test_long_poll_answers_within_100_ms_of_the_change_that_ends_it(start_server: StartServer, runlog: Path) -> None:
    server = start_server("--app", APP, "--workers", "1")
    delays: list[float] = []
    with client_for(server) as client:
        job = submit(client, "once", seconds=2.4, step=0.4)  # a progress report every 0.4 s
        while job["state"] not in TERMINAL:
            sent = datetime.now(UTC)
            answer = client.get(
                f"/api/jobs/{job['id']}", params={"poll_timeout": 30, "last_modified": job["last_modified"]}
            )
            arrived = datetime.now(UTC)
            assert answer.status_code == 200, answer.text
            changed = answer.json()["record"]
            assert changed["last_modified"] > job["last_modified"]
            changed_at = moment(changed["last_modified"])
            if changed_at > sent:  # the change came while the poll was waiting
                delays.append((arrived - changed_at).total_seconds())
            job = changed
    assert job["state"] == "success"
    assert len(delays) >= 4, delays
    assert max(delays) < 0.1, [f"{delay * 1000:.0f} ms" for delay in delays]


def test_long_poll_timeout_answers_the_unchanged_job_after_the_timeout(start_server: StartServer) -> None:
    server = start_server("--workers", "0")
    with client_for(server) as client:
        job = _queued_host(client)  # --workers 0: it stays queued and never changes
        began = time.monotonic()
        answer = client.get(f"/api/jobs/{job['id']}", params={"poll_timeout": 2})
        took = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    assert answer.json()["record"] == job
    assert 2.0 <= took < 3.5, took


def test_a_cancel_ends_a_long_poll_at_once(start_server: StartServer) -> None:
    server = start_server("--workers", "0")
    with client_for(server) as client, ThreadPoolExecutor(max_workers=1) as pool:
        job = _queued_host(client)
        poll = pool.submit(_long_poll, server.url, job)
        time.sleep(0.3)  # let the request reach the server
        assert not poll.done()
        cancelled = client.patch(f"/api/jobs/{job['id']}", params={"action": "cancel"})
        asked = time.monotonic()
        assert cancelled.status_code == 202, cancelled.text
        answer, answered = poll.result(timeout=30)
    assert answer.status_code == 200, answer.text
    assert outcome(answer.json()["record"]) == ("failure", "cancelled")
    assert answered - asked < 1.0


def _queued_host(client: httpx.Client, name: str = "quiet") -> dict[str, Any]:
    answer = client.post("/api/hosts", json={"name": name, "address": "10.0.0.1"})
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()["job"]
    assert job["state"] == "queued"
    return job


def _with_offset(stamp: datetime, hours: int) -> str:
    return stamp.astimezone(timezone(timedelta(hours=hours))).isoformat(timespec="microseconds")


def test_long_poll_baseline_accepts_prefixes_offsets_and_any_precision(start_server: StartServer) -> None:
    server = start_server("--workers", "0")  # the job stays queued: it never changes
    with client_for(server) as client:
        job = _queued_host(client)
        modified = moment(job["last_modified"])
        earlier = modified - timedelta(microseconds=1)

        def poll(baseline: str, timeout: int) -> float:
            began = time.monotonic()
            answer = client.get(f"/api/jobs/{job['id']}?poll_timeout={timeout}&last_modified={baseline}")
            took = time.monotonic() - began
            assert answer.status_code == 200, f"last_modified={baseline}: {answer.text}"
            assert answer.json()["record"] == job
            return took

        # a baseline equal to last_modified waits for the timeout, in any notation
        for baseline in (
            quote(job["last_modified"]),
            quote(">" + job["last_modified"]),
            quote(">=" + job["last_modified"]),
            quote(_with_offset(modified, 1)),
            quote(">=" + _with_offset(modified, -5)),
            _with_offset(modified, 1).replace("+", "%2B").replace(":", "%3A"),
        ):
            assert poll(baseline, 1) >= 1.0, f"last_modified={baseline} did not wait"
        # a baseline earlier than last_modified answers at once, in any notation and precision
        for baseline in (
            quote(earlier.isoformat(timespec="microseconds")),
            quote(">" + _with_offset(earlier, 1)),
            quote(">=" + _with_offset(earlier, -5)),
            _with_offset(earlier, 1),  # an unencoded '+' arrives as a space
            quote((modified - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")),
            quote(
                ">="
                + (modified - timedelta(seconds=1))
                .astimezone(timezone(timedelta(hours=1)))
                .isoformat(timespec="seconds")
            ),
        ):
            assert poll(baseline, 20) < 1.0, f"last_modified={baseline} did not answer at once"
        bad = client.get(f"/api/jobs/{job['id']}", params={"poll_timeout": 5, "last_modified": "yesterday"})
        assert_error_body(bad, 400)
        assert bad.json()["error"]["target"] == "last_modified"


# -- interactive docs ----------------------------------------------------------------------


@pytest.mark.parametrize("page_path", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_served_by_the_server(start_server: StartServer, page_path: str) -> None:
    server = start_server("--workers", "0")
    with client_for(server) as client:
        page = client.get(page_path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert not re.search(r"https?://", page.text), "the page loads something from another host"
        assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
        assert any(asset.endswith(".js") for asset in assets), assets
        for asset in assets:
            parts = urlsplit(asset)
            assert not parts.scheme and not parts.netloc, f"{asset} is not served by this server"
            loaded = client.get(asset)
            assert loaded.status_code == 200, asset
            assert loaded.content, asset
        if page_path == "/docs":
            assert any(asset.endswith(".css") for asset in assets), assets
            openapi = re.search(r"""url:\s*'([^']+)'""", page.text)
            assert openapi is not None and openapi.group(1) == "/openapi.json"


def test_openapi_documents_the_asynchronous_calls(start_server: StartServer) -> None:
    server = start_server("--workers", "0")
    with client_for(server) as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    schema = answer.json()
    post = schema["paths"]["/api/hosts"]["post"]
    accepted = post["responses"]["202"]
    envelope_ref = accepted["content"]["application/json"]["schema"]["$ref"]
    envelope = schema["components"]["schemas"][envelope_ref.rsplit("/", 1)[-1]]
    job_schema = envelope["properties"]["job"]
    job_ref = job_schema.get("$ref") or job_schema["allOf"][0]["$ref"]
    job_fields = schema["components"]["schemas"][job_ref.rsplit("/", 1)[-1]]["properties"]
    assert {"id", "operation", "state", "last_modified", "_links"} <= set(job_fields)
    assert {"Location", "Retry-After"} <= set(accepted.get("headers", {}))
    parameters = {(parameter["in"], parameter["name"]) for parameter in post["parameters"]}
    assert {("query", "return_timeout"), ("header", "Idempotency-Key")} <= parameters
    assert "422" not in post["responses"] or "Idempotency" in post["responses"]["422"]["description"]
    # the other asynchronous calls of the reference service are documented the same way
    for path, method in (("/api/clusters/{cluster_id}/deploy", "post"), ("/api/clusters/{cluster_id}", "delete")):
        assert schema["paths"][path][method]["responses"]["202"]["content"]["application/json"]["schema"] == {
            "$ref": envelope_ref
        }


# -- request ids, error bodies, refusing a non-loopback address ----------------------------


def test_every_answer_carries_a_request_id_and_every_error_the_spec_body(start_server: StartServer) -> None:
    server = start_server("--workers", "0")
    with client_for(server) as client:
        queued = client.post("/api/hosts", json={"name": "h1", "address": "10.0.0.1"})
        job_id = queued.json()["job"]["id"]
        answers = {
            "list jobs": client.get("/api/jobs"),
            "start": queued,
            "read job": client.get(f"/api/jobs/{job_id}"),
            "docs": client.get("/docs"),
            "delete running job": client.delete(f"/api/jobs/{job_id}"),
            "cancel": client.patch(f"/api/jobs/{job_id}", params={"action": "cancel"}),
            "delete ended job": client.delete(f"/api/jobs/{job_id}"),
            "unknown job": client.get("/api/jobs/no-such-job"),
            "unknown path": client.get("/api/no/such/path"),
            "bad parameter": client.get("/api/jobs", params={"max_records": 0}),
            "bad poll_timeout": client.get(f"/api/jobs/{job_id}", params={"poll_timeout": "soon"}),
            "unknown field": client.get("/api/jobs", params={"fields": "colour"}),
            "bad method": client.put("/api/jobs"),
            "bad body": client.post("/api/hosts", json={"name": "h2"}),
            "malformed json": client.post(
                "/api/hosts", content=b"{not json", headers={"content-type": "application/json"}
            ),
        }
        echoed = client.get("/api/jobs", headers={"request-id": "my-trace-42"})
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "list jobs": 200,
        "start": 202,
        "read job": 200,
        "docs": 200,
        "delete running job": 409,
        "cancel": 202,
        "delete ended job": 204,
        "unknown job": 404,
        "unknown path": 404,
        "bad parameter": 400,
        "bad poll_timeout": 400,
        "unknown field": 400,
        "bad method": 405,
        "bad body": 400,
        "malformed json": 400,
    }
    ids = [answer.headers.get("request-id") for answer in answers.values()]
    assert all(ids), dict(zip(answers, ids, strict=True))
    assert len(set(ids)) == len(ids), "request ids repeat"
    for answer in answers.values():
        if answer.status_code >= 400:
            assert_error_body(answer, answer.status_code)
    assert answers["unknown job"].json()["error"]["code"] == "job_not_found"
    assert answers["bad parameter"].json()["error"]["target"] == "max_records"
    assert answers["bad poll_timeout"].json()["error"]["target"] == "poll_timeout"
    assert answers["unknown field"].json()["error"]["target"] == "fields"
    assert echoed.headers["request-id"] == "my-trace-42"


def test_an_unexpected_fault_is_a_500_with_the_spec_body_and_the_request_id_in_the_log(
    start_server: StartServer, runlog: Path
) -> None:
    server = start_server("--app", APP, "--workers", "0")
    with client_for(server) as client:
        answer = client.get("/api/boom")
    error = assert_error_body(answer, 500, "internal_error")
    request_id = answer.headers["request-id"]
    assert "boom" not in answer.text and "Traceback" not in answer.text and "RuntimeError" not in answer.text
    assert request_id in error["message"]
    wait_until(lambda: request_id in server.log(), "the fault is logged")
    logged = [line for line in server.log().splitlines() if request_id in line]
    assert any("/api/boom" in line for line in logged), logged


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_serve_refuses_a_non_loopback_address(tmp_path: Path, host: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tarefa", "serve", "--host", host, "--port", "8765",
         "--store", f"sqlite:///{tmp_path}/refused.db"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert f"refusing to listen on {host}" in done.stderr
    assert "loopback" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "refused.db").exists(), "it opened the store before refusing"
