"""Callbacks through real processes and real HTTP (SPEC §10): ``tarefa serve`` (and ``tarefa
worker``) POST to a real receiver on 127.0.0.1, signed as Standard Webhooks says; retries after a
500, none after a 410; a ``kill -9`` mid-delivery loses nothing (SQLite and PostgreSQL); refused
targets are a 400 that stores nothing; a hanging receiver delays neither jobs nor other callbacks."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from callback_receiver import Received, Receiver
from job_polling import follow
from pg_database import postgres_database
from standardwebhooks import Webhook

from conftest import ServerProcess, free_port

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
ALLOW_LOOPBACK = ("--callback-allow", "127.0.0.0/8")
FAST_RETRIES = ("--callback-backoff", "0.05")
HOST = {"name": "h1", "address": "10.0.0.1"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def signed_server(start_server: Any, *args: str, **kw: Any) -> ServerProcess:
    server: ServerProcess = start_server("--webhook-secret", SECRET, *args, **kw)
    return server


def register(server: ServerProcess, name: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/api/hosts", json={**HOST, "name": name}, headers=headers, timeout=30)


def verified(received: Received) -> dict[str, Any]:
    """The callback's body, once its signature is verified with the receiver's own library."""
    body: dict[str, Any] = Webhook(SECRET).verify(received.body, received.headers)
    return body


def attempts(server: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.url}/api/jobs/{job_id}/callbacks", timeout=30)
    assert answer.status_code == 200, answer.text
    records: list[dict[str, Any]] = answer.json()["records"]
    return records


def wait_attempts(server: ServerProcess, job_id: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := attempts(server, job_id)) < count:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    return found


def test_callbacks_arrive_signed_terminal_only_by_default_every_event_with_all(
    start_server: Any, receiver: Receiver
) -> None:
    server = signed_server(start_server, *ALLOW_LOOPBACK)
    started = register(server, "h1", {"Callback-URL": receiver.url("/end")})
    assert started.status_code == 202, started.text
    job_id = started.json()["job"]["id"]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        done = follow(client, started.json()["job"])
        [end] = receiver.wait_for("/end", 1)
        body = verified(end)
        assert body["event"]["state"] == "success" and body["job"]["id"] == job_id
        history = client.get(f"/api/jobs/{job_id}/events").json()["records"]
        assert body["job"] == done and body["event"] == history[-1]  # the job as on the wire, the last event
        assert end.headers["webhook-id"].startswith("msg_") and end.headers["content-type"] == "application/json"

        every = register(server, "h2", {"Callback-URL": receiver.url("/all"), "Callback-Events": "all"})
        job = follow(client, every.json()["job"])
        events = client.get(f"/api/jobs/{job['id']}/events").json()["records"]
        got = receiver.wait_for("/all", len(events))
    assert sorted((verified(r)["event"] for r in got), key=lambda e: e["seq"]) == events
    assert len({r.headers["webhook-id"] for r in got}) == len(events)
    time.sleep(0.5)
    assert len(receiver.to("/end")) == 1  # nothing but the end
    [attempt] = attempts(server, job_id)
    assert attempt["outcome"] == "delivered" and attempt["status_code"] == 200
    assert attempt["webhook_id"] == end.headers["webhook-id"]
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"another secret of 24 bytes").decode()).verify(end.body, end.headers)


def test_a_receiver_answering_500_then_200_gets_the_retry(start_server: Any, receiver: Receiver) -> None:
    server = signed_server(start_server, *ALLOW_LOOPBACK, *FAST_RETRIES)
    receiver.answer("/flaky", 500, 200)
    job_id = register(server, "h1", {"Callback-URL": receiver.url("/flaky")}).json()["job"]["id"]
    first, second = receiver.wait_for("/flaky", 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] and verified(second) == verified(first)
    recorded = wait_attempts(server, job_id, 2)
    assert [(a["outcome"], a["status_code"]) for a in recorded] == [("failed", 500), ("delivered", 200)]
    time.sleep(0.5)
    assert len(receiver.to("/flaky")) == 2


def test_410_stops_the_retries(start_server: Any, receiver: Receiver) -> None:
    server = signed_server(start_server, *ALLOW_LOOPBACK, *FAST_RETRIES)
    receiver.answer("/gone", 410)
    job_id = register(server, "h1", {"Callback-URL": receiver.url("/gone")}).json()["job"]["id"]
    receiver.wait_for("/gone", 1)
    [attempt] = wait_attempts(server, job_id, 1)
    assert attempt["outcome"] == "gone" and attempt["status_code"] == 410
    time.sleep(1.5)  # some 30 backoffs of 0.05 s: a retry would have come
    assert len(receiver.to("/gone")) == 1 and len(attempts(server, job_id)) == 1
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'tarefa_callbacks_total{outcome="gone"} 1.0' in metrics


def test_a_delivery_that_keeps_failing_expires_after_its_retry_time(start_server: Any, receiver: Receiver) -> None:
    server = signed_server(start_server, *ALLOW_LOOPBACK, *FAST_RETRIES, "--callback-retry-for", "1")
    receiver.answer("/down", 503)
    job_id = register(server, "h1", {"Callback-URL": receiver.url("/down")}).json()["job"]["id"]
    deadline = time.monotonic() + 30
    while not (found := attempts(server, job_id)) or found[-1]["outcome"] != "expired":
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    assert len(found) >= 2 and {a["outcome"] for a in found[:-1]} == {"failed"}
    assert all(a["status_code"] == 503 for a in found)
    count = len(receiver.to("/down"))
    time.sleep(1.0)
    assert len(receiver.to("/down")) == count == len(found)


REFUSED = [
    "http://127.0.0.1:{port}/hook",
    "http://10.1.2.3/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]:{port}/hook",
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://localhost:{port}/hook",
    "http://192.168.1.10/hook",
    "http://[fe80::1]/hook",
]


def test_refused_targets_are_a_400_that_stores_nothing(start_server: Any, receiver: Receiver) -> None:
    server = signed_server(start_server)
    for template in REFUSED:
        url = template.format(port=receiver.port)
        answer = register(server, "h1", {"Callback-URL": url})
        assert answer.status_code == 400, (url, answer.text)
        assert answer.json()["error"]["code"] == "callback_url_refused", url
        assert answer.json()["error"]["target"] == "Callback-URL"
    bad = {
        "ftp://example.com/x": "invalid_callback_url",
        "/relative/path": "invalid_callback_url",
        "http://" + "a" * 2100 + ".com/": "invalid_callback_url",
    }
    for url, code in bad.items():
        answer = register(server, "h1", {"Callback-URL": url})
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, code), url
    answer = register(server, "h1", {"Callback-URL": "https://example.com/x", "Callback-Events": "some"})
    assert answer.status_code == 400 and answer.json()["error"]["target"] == "Callback-Events"
    listed = httpx.get(f"{server.url}/api/jobs", timeout=30).json()
    assert listed["num_records"] == 0 and httpx.get(f"{server.url}/api/hosts", timeout=30).json()["num_records"] == 0
    assert receiver.requests == []


def test_callback_allow_lets_loopback_through(start_server: Any, receiver: Receiver) -> None:
    server = signed_server(start_server, *ALLOW_LOOPBACK)
    answer = register(server, "h1", {"Callback-URL": receiver.url()})
    assert answer.status_code == 202, answer.text
    assert register(server, "h2", {"Callback-URL": "http://10.1.2.3/hook"}).status_code == 400
    receiver.wait_for("/hook", 1)


def test_without_a_secret_a_callback_url_is_refused_naming_the_option(start_server: Any, receiver: Receiver) -> None:
    server: ServerProcess = start_server(*ALLOW_LOOPBACK)
    answer = register(server, "h1", {"Callback-URL": receiver.url()})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "callbacks_not_configured" and "--webhook-secret" in error["message"]
    assert httpx.get(f"{server.url}/api/jobs", timeout=30).json()["num_records"] == 0


def test_a_bad_secret_stops_the_server_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tarefa", "serve", "--port", str(free_port()), "--store", f"sqlite:///{tmp_path}/t.db",
         "--webhook-secret", "whsec_not-base64!"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "webhook secret" in result.stderr and "Traceback" not in result.stderr


def test_a_hanging_receiver_delays_neither_jobs_nor_other_callbacks(start_server: Any, receiver: Receiver) -> None:
    server = signed_server(start_server, *ALLOW_LOOPBACK)
    receiver.hold("/hang")
    register(server, "h1", {"Callback-URL": receiver.url("/hang"), "Callback-Events": "all"})
    receiver.wait_for("/hang", 1)  # held open: the receiver answers nothing
    began = time.monotonic()
    other = register(server, "h2", {"Callback-URL": receiver.url("/quick")})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        done = follow(client, other.json()["job"])
        plain = follow(client, register(server, "h3", {}).json()["job"])
    [quick] = receiver.wait_for("/quick", 1, timeout=5)
    assert done["state"] == plain["state"] == "success"
    assert quick.at - time.time() + time.monotonic() - began < 3.0  # far below the held request's 10 s timeout
    assert len(receiver.to("/hang")) >= 1


# -- kill -9 mid-delivery ----------------------------------------------------------------------------


def kill_mid_delivery_then_restart(receiver: Receiver, kill: Any, restart: Any) -> None:
    """The first POST is held open; the delivering process dies; restarted, it delivers again."""
    [held] = receiver.wait_for("/crash", 1)
    kill()
    receiver.release("/crash")
    restart()
    first, again = receiver.wait_for("/crash", 2, timeout=60)
    assert again.headers["webhook-id"] == first.headers["webhook-id"] == held.headers["webhook-id"]
    assert verified(again) == verified(first) and verified(again)["event"]["state"] == "success"


def test_kill_9_mid_delivery_on_sqlite_loses_nothing(start_server: Any, receiver: Receiver) -> None:
    server = signed_server(start_server, *ALLOW_LOOPBACK)
    receiver.hold("/crash")
    job_id = register(server, "h1", {"Callback-URL": receiver.url("/crash")}).json()["job"]["id"]
    kill_mid_delivery_then_restart(receiver, server.kill, server.restart)
    recorded = wait_attempts(server, job_id, 1)
    assert [a["outcome"] for a in recorded] == ["delivered"]


@pytest.mark.postgres
def test_kill_9_of_the_worker_mid_delivery_on_postgresql_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    with postgres_database("tarefa_e2e_cb") as store:
        api = ServerProcess(["--store", store, "--workers", "0", "--step-delay", "0.01", "--webhook-secret", SECRET,
                             *ALLOW_LOOPBACK], free_port(), tmp_path / "api.log")  # fmt: skip
        worker = Worker(store, tmp_path)
        try:
            api.start()
            worker.start()
            receiver.hold("/crash")
            job_id = register(api, "h1", {"Callback-URL": receiver.url("/crash")}).json()["job"]["id"]
            kill_mid_delivery_then_restart(receiver, worker.kill, worker.start)
            assert [a["outcome"] for a in wait_attempts(api, job_id, 1)] == ["delivered"]
        finally:
            worker.stop()
            api.stop()


class Worker:
    """``tarefa worker`` with the same callback settings and a short lease."""

    def __init__(self, store: str, tmp_path: Path) -> None:
        self.command = [sys.executable, "-m", "tarefa", "worker", "--store", store, "--step-delay", "0.01",
                        "--lease", "2", "--webhook-secret", SECRET, *ALLOW_LOOPBACK]  # fmt: skip
        self.log = tmp_path / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + 60
        while self.log.read_text().count("tarefa worker started") < self.starts:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
