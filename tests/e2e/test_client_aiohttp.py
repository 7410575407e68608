"""The asynchronous client's aiohttp transport against real servers: ``tarefa serve`` (with users
and TLS), and small stub HTTP servers that answer 503, or never answer."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from secured import Secured, make_certificates, make_users_file, servers, start_secured

from conftest import free_port
from tarefa.client import AsyncClient, JobState, RetryNotice, TransportFailure, Unauthorized

HOST = {"address": "10.0.0.1"}


def host(name: str) -> dict[str, str]:
    return {"name": name, **HOST}


@pytest.fixture
def started() -> Iterator[list[Secured]]:
    yield from servers()


@pytest.fixture(scope="module")
def tls_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Secured, Path]]:
    """One ``tarefa serve`` over HTTPS (a trustme CA) with users: the server and the CA file."""
    where = tmp_path_factory.mktemp("aiohttp-tls")
    certs = make_certificates(where, "127.0.0.1")
    users = make_users_file(where / "users.json")
    trusted = ssl.create_default_context(cafile=str(certs.ca))
    server = start_secured(where, "--users", str(users), "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
                           "--store", f"sqlite:///{where}/t.db", scheme="https", verify=trusted)  # fmt: skip
    yield server, certs.ca
    server.proc.terminate()
    server.proc.wait(20)


def test_tls_with_a_private_ca_and_basic_auth(tls_users: tuple[Secured, Path]) -> None:
    server, ca = tls_users

    async def scenario() -> None:
        async with AsyncClient(server.url, auth=("alice", "alice-pw"), verify=str(ca)) as client:
            done = await client.run("POST", "/api/hosts", host("tls-1"), timeout=30)
            assert done.state is JobState.SUCCESS and client.http_library == "aiohttp"
        context = ssl.create_default_context(cafile=str(ca))
        async with AsyncClient(server.url, auth=("bob", "bob-pw"), verify=context) as bob:
            assert [job async for job in bob.list()] == []  # alice's job is not bob's
        async with AsyncClient(server.url, auth=("alice", "wrong"), verify=False, retry_for=0) as wrong:
            with pytest.raises(Unauthorized):
                await wrong.get(done.id)
        async with AsyncClient(server.url, auth=("alice", "alice-pw"), retry_for=30) as untrusting:
            with pytest.raises(TransportFailure) as failure:
                await untrusting.get(done.id)
        assert "certificate is not trusted" in str(failure.value) and failure.value.attempts == 1

    asyncio.run(scenario())


def test_credentials_from_netrc(tls_users: tuple[Secured, Path], tmp_path: Path, monkeypatch: Any) -> None:
    server, ca = tls_users
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password alice-pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    async def scenario() -> JobState:
        async with AsyncClient(server.url, verify=str(ca)) as client:
            job = await client.run("POST", "/api/hosts", host("netrc-1"), timeout=30)
            assert client.http_library == "aiohttp"
            return job.state

    assert asyncio.run(scenario()) is JobState.SUCCESS


def test_https_to_a_plain_http_server_is_not_retried_and_says_so(server: Any) -> None:
    async def scenario() -> TransportFailure:
        async with AsyncClient(server.url.replace("http://", "https://"), retry_for=30) as client:
            with pytest.raises(TransportFailure) as failure:
                await client.get("any")
            return failure.value

    failure = asyncio.run(scenario())
    assert failure.attempts == 1 and str(failure).endswith("(the server does not speak TLS here: use http://)")


def test_connection_refused_is_retried_until_the_server_is_back(start_server: Callable[..., Any]) -> None:
    victim = start_server()
    victim.kill()
    notices: list[RetryNotice] = []
    threading.Timer(1.0, victim.restart).start()

    async def scenario() -> JobState:
        async with AsyncClient(victim.url, retry_for=30, on_retry=notices.append) as client:
            # a POST without a key is retried only when it surely did not reach the server
            job = await client.run("POST", "/api/hosts", host("refused-1"), idempotency_key=False, timeout=60)
            return job.state

    assert asyncio.run(scenario()) is JobState.SUCCESS
    assert notices and all("Cannot connect" in n.reason or "refused" in n.reason for n in notices)


# -- stub servers: 503 then 200, and a server that never answers ---------------------------------


class Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.answers = answers
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Stub

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path, dict(self.headers.items())))
        if not self.server.answers:
            time.sleep(30)  # never answers in time
            return
        status, headers, body = self.server.answers.pop(0)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[Callable[..., Stub]]:
    made: list[Stub] = []

    def factory(answers: list[tuple[int, dict[str, str], bytes]]) -> Stub:
        server = Stub(answers)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(server)
        return server

    yield factory
    for server in made:
        server.shutdown()
        server.server_close()


JOB = b'{"record": {"id": "j1", "state": "success", "last_modified": "2026-11-28T14:00:00.000000Z"}}'
BUSY = b'{"error": {"code": "store_unavailable", "message": "busy"}}'


def test_503_is_retried_after_retry_after(stub: Callable[..., Stub]) -> None:
    busy = (503, {"Retry-After": "0", "Content-Type": "application/json"}, BUSY)
    server = stub([busy, busy, (200, {"Content-Type": "application/json"}, JOB)])
    notices: list[RetryNotice] = []

    async def scenario() -> str:
        async with AsyncClient(server.url, on_retry=notices.append) as client:
            return (await client.get("j1")).id

    assert asyncio.run(scenario()) == "j1"
    assert (
        len(server.requests) == 3 and [n.reason for n in notices] == ["the server answered 503 Service Unavailable"] * 2
    )
    assert server.requests[0][2].get("Accept") == "application/json"


def test_a_server_that_never_answers_times_out(stub: Callable[..., Stub]) -> None:
    server = stub([])

    async def scenario() -> tuple[TransportFailure, float]:
        async with AsyncClient(server.url, http_timeout=0.5, poll_margin=0.2, retry_for=1.2) as client:
            started = time.monotonic()
            with pytest.raises(TransportFailure) as failure:
                await client.get("j1")
            return failure.value, time.monotonic() - started

    failure, elapsed = asyncio.run(scenario())
    assert "timeout" in str(failure).lower() and failure.attempts >= 2
    assert 1.0 <= elapsed < 10


def test_one_shared_client_serves_many_concurrent_callers_with_one_request_each(
    start_server: Callable[..., Any],
) -> None:
    target = start_server("--access-log")

    async def scenario() -> list[JobState]:
        async with AsyncClient(target.url) as client:
            jobs = await asyncio.gather(
                *(client.run("POST", "/api/hosts", host(f"c{i}"), timeout=60) for i in range(40))
            )
            return [job.state for job in jobs]

    assert asyncio.run(scenario()) == [JobState.SUCCESS] * 40
    log = target.log()
    posts, polls = log.count('"POST /api/hosts?return_timeout='), log.count('"GET /api/jobs/')
    assert posts == 40 and polls <= 40, (posts, polls)


def test_the_port_is_free_once_the_client_is_closed() -> None:
    """A client that never sent a request has nothing to close (no session made outside a loop)."""
    client = AsyncClient(f"http://127.0.0.1:{free_port()}")
    asyncio.run(client.aclose())
    assert client.http_library is None
