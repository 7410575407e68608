"""The client against a real ``tarefa serve`` process (and, for faults, a small HTTP proxy)."""

from __future__ import annotations

import itertools
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from tarefa.client import AsyncClient, Client, Conflict, Job, JobFailed, JobState, NotFound, TransportFailure

STATE_ORDER = {JobState.QUEUED: 0, JobState.RUNNING: 1, JobState.SUCCESS: 2, JobState.FAILURE: 2}


def host(name: str, address: str = "10.0.0.1") -> dict[str, str]:
    return {"name": name, "address": address}


def assert_in_order(seen: list[Job]) -> None:
    """States move forward, progress never goes back, each version is later than the one before."""
    assert [STATE_ORDER[j.state] for j in seen] == sorted(STATE_ORDER[j.state] for j in seen)
    progress = [j.progress for j in seen if j.progress is not None]
    assert progress == sorted(progress)
    stamps = [j.last_modified for j in seen]
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(stamps))


# -- success and failure ------------------------------------------------------------------------


def test_run_success_reports_progress_in_order(server: Any) -> None:
    seen: list[Job] = []
    with Client(server.url) as client:
        done = client.run("POST", "/api/hosts", host("h1"), on_change=seen.append, timeout=30)
    assert done.state is JobState.SUCCESS and done.result["name"] == "h1"
    assert done.operation == "host.register" and done.end_time is not None
    assert seen[0].state is JobState.QUEUED and seen[-1].state is JobState.SUCCESS
    assert_in_order(seen)
    assert len({j.message for j in seen}) >= 3


def test_run_failure_raises_job_failed(server: Any) -> None:
    with Client(server.url) as client, pytest.raises(JobFailed) as failure:
        client.run("POST", "/api/hosts", host("bad", "192.0.2.10"), timeout=30)
    assert failure.value.code == "host_unreachable"
    assert failure.value.job.state is JobState.FAILURE and failure.value.job.end_time is not None


def test_submit_then_wait_and_errors(server: Any) -> None:
    with Client(server.url) as client:
        job = client.submit("POST", "/api/hosts", host("h2"))
        assert job.state is JobState.QUEUED and job.self_href == f"/api/jobs/{job.id}"
        done = client.wait(job, timeout=30)
        assert done.state is JobState.SUCCESS and client.get(job.id).state is JobState.SUCCESS
        with pytest.raises(Conflict) as duplicate:
            client.submit("POST", "/api/hosts", host("h2"))
        assert (duplicate.value.status, duplicate.value.code, duplicate.value.target) == (409, "host_exists", "name")
        client.delete(job)
        with pytest.raises(NotFound):
            client.get(job.id)


def test_return_timeout_answers_200_with_the_terminal_job(server: Any) -> None:
    with Client(server.url) as client:
        done = client.submit("POST", "/api/hosts", host("h3"), return_timeout=20)
    assert done.is_terminal and done.state is JobState.SUCCESS


def test_cancel_a_running_job(start_server: Callable[..., Any]) -> None:
    slow = start_server(step_delay=2.0)
    with Client(slow.url) as client:
        job = client.submit("POST", "/api/hosts", host("h4"))
        while client.get(job).state is JobState.QUEUED:
            time.sleep(0.05)
        client.cancel(job)
        done = client.wait(job, timeout=30)
    assert done.state is JobState.FAILURE and done.error is not None and done.error.code == "cancelled"


def test_list_follows_pages(server: Any) -> None:
    with Client(server.url) as client:
        started = [client.submit("POST", "/api/hosts", host(f"p{i}", f"10.0.1.{i}")).id for i in range(5)]
        found = [job.id for job in client.list(operation="host.register", max_records=2)]
    assert sorted(found) == sorted(started)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_client_runs_the_same_procedure(server: Any) -> None:
    seen: list[Job] = []
    async with AsyncClient(server.url) as client:
        done = await client.run("POST", "/api/hosts", host("a1"), on_change=seen.append, timeout=30)
        listed = [job.id async for job in client.list(state="success")]
    assert done.state is JobState.SUCCESS and done.id in listed
    assert_in_order(seen)


# -- faults -------------------------------------------------------------------------------------


def test_wait_survives_kill_9_and_restart(start_server: Callable[..., Any]) -> None:
    victim = start_server("--lease", "2", step_delay=1.0)
    seen: list[Job] = []
    running = threading.Event()
    outcome: list[Job | BaseException] = []

    def follow(client: Client, job: Job) -> None:
        try:
            outcome.append(client.wait(job, timeout=60, on_change=lambda j: (seen.append(j), running.set())))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    with Client(victim.url, retry_for=60) as client:
        job = client.submit("POST", "/api/hosts", host("k1"))
        waiter = threading.Thread(target=follow, args=(client, job))
        waiter.start()
        assert running.wait(10)
        time.sleep(0.3)
        victim.kill()
        time.sleep(1.0)
        victim.restart()
        waiter.join(60)
    assert not waiter.is_alive()
    done = outcome[0]
    assert isinstance(done, Job), done
    assert done.id == job.id and done.is_terminal, victim.log()
    assert_in_order(seen)
    print(f"after kill -9 the job ended {done.state.value}: {done.message}")


class Proxy(ThreadingHTTPServer):
    """An HTTP proxy in front of ``tarefa serve`` that can misbehave on purpose.

    - ``drop_first_post``: forwards the first POST, then closes the connection without
      answering (the job exists; the client never hears of it);
    - ``ignore_long_polls``: removes ``poll_timeout``/``last_modified`` (and ``Retry-After`` from
      the answers), so the server answers every poll at once, like a server without long polls;
    - ``tls=(certificate, key)``: serves HTTPS, as a Deploy server behind its own CA would.
    """

    daemon_threads = True

    def __init__(
        self,
        upstream: str,
        *,
        drop_first_post: bool = False,
        ignore_long_polls: bool = False,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.upstream = upstream
        self.drop_first_post = drop_first_post
        self.ignore_long_polls = ignore_long_polls
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def record(self, method: str, path: str, headers: dict[str, str]) -> bool:
        """Note the request; ``True`` if its answer is to be dropped."""
        with self.lock:
            self.seen.append((method, path, headers))
            posts = [s for s in self.seen if s[0] == "POST"]
            return self.drop_first_post and method == "POST" and len(posts) == 1

    def rewrite(self, path: str) -> str:
        if not self.ignore_long_polls:
            return path
        parts = urlsplit(path)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("poll_timeout", "last_modified")]
        return parts.path + (f"?{urlencode(query)}" if query else "")


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        drop = self.server.record(self.command, self.path, headers)
        target = self.server.upstream + self.server.rewrite(self.path)
        upstream = httpx.request(self.command, target, headers=headers, content=body, timeout=130)
        if drop:
            self.close_connection = True
            return
        self.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            skipped = ("content-length", "transfer-encoding", "connection", "content-encoding", "date", "server")
            if name.lower() in skipped or (self.server.ignore_long_polls and name.lower() == "retry-after"):
                continue
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    do_POST = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxy_for() -> Iterator[Callable[..., Proxy]]:
    started: list[tuple[Proxy, threading.Thread]] = []

    def factory(upstream: str, **faults: Any) -> Proxy:
        proxy = Proxy(upstream, **faults)
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        started.append((proxy, thread))
        return proxy

    yield factory
    for proxy, thread in started:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)


def test_dropped_submit_is_retried_with_the_same_key_and_makes_one_job(
    server: Any, proxy_for: Callable[..., Proxy]
) -> None:
    proxy = proxy_for(server.url, drop_first_post=True)
    with Client(proxy.url) as client:
        job = client.submit("POST", "/api/hosts", host("d1"))
    posts = [headers for method, _, headers in proxy.seen if method == "POST"]
    keys = {h.get("Idempotency-Key") or h.get("idempotency-key") for h in posts}
    assert len(posts) == 2 and len(keys) == 1 and None not in keys
    with Client(server.url) as direct:
        jobs = list(direct.list(operation="host.register"))
    assert [j.id for j in jobs] == [job.id]


def test_client_backs_off_against_a_server_ignoring_long_polls(
    start_server: Callable[..., Any], proxy_for: Callable[..., Proxy]
) -> None:
    slow = start_server(step_delay=1.0)
    proxy = proxy_for(slow.url, ignore_long_polls=True)
    seen: list[Job] = []
    with Client(proxy.url) as client:
        job = client.submit("POST", "/api/hosts", host("b1"))
        started = time.monotonic()
        done = client.wait(job, timeout=60, on_change=seen.append)
        elapsed = time.monotonic() - started
    polls = [path for method, path, _ in proxy.seen if method == "GET"]
    assert done.state is JobState.SUCCESS and elapsed >= 2.0
    assert all("poll_timeout=" in path for path in polls)  # the client did ask for long polls
    assert len(polls) <= 3 + 2 * elapsed, f"{len(polls)} polls in {elapsed:.1f} s"
    assert_in_order(seen)


def test_the_example_runs(server: Any) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "client_procedure.py"
    command = [sys.executable, str(example), "--url", server.url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "failed as expected: host_unreachable" in done.stdout and "409 host_exists" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("  -> success")


# -- TLS with a private CA ----------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA certificate, and a certificate and key for 127.0.0.1 that it signed."""
    where = tmp_path_factory.mktemp("tls")
    new_key = ("-nodes", "-newkey", "rsa:2048")
    openssl("req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=CA", cwd=where)
    openssl("req", *new_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=where)
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=where,
    )  # fmt: skip
    return where / "ca.pem", where / "server.pem", where / "server.key"


def test_tls_with_a_custom_ca_or_without_verification(
    server: Any, proxy_for: Callable[..., Proxy], private_ca: tuple[Path, Path, Path]
) -> None:
    ca, certificate, key = private_ca
    proxy = proxy_for(server.url, tls=(certificate, key))
    with Client(proxy.url, verify=str(ca)) as client:
        assert client.run("POST", "/api/hosts", host("t1"), timeout=30).state is JobState.SUCCESS
    with Client(proxy.url, verify=False) as client:
        assert client.get(client.submit("POST", "/api/hosts", host("t2"))).id
    with Client(proxy.url, retry_for=30) as client, pytest.raises(TransportFailure) as failure:
        client.get("any")
    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value) and failure.value.attempts == 1


def test_cli_tls_options(server: Any, proxy_for: Callable[..., Proxy], private_ca: tuple[Path, Path, Path]) -> None:
    ca, certificate, key = private_ca
    proxy = proxy_for(server.url, tls=(certificate, key))
    tarefa = [sys.executable, "-m", "tarefa", "jobs", "list", "--url", proxy.url]
    assert subprocess.run([*tarefa, "--ca-cert", str(ca)], capture_output=True, timeout=60).returncode == 0
    assert subprocess.run([*tarefa, "--insecure"], capture_output=True, timeout=60).returncode == 0
    refused = subprocess.run(tarefa, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
