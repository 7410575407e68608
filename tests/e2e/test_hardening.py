"""Bad input and faults against real ``tarefa serve`` processes, over raw sockets where the HTTP
protocol itself is at stake (issue 12, points 4 to 10)."""

from __future__ import annotations

import base64
import json
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_database import postgres_database

from conftest import ServerProcess, free_port

TIMEOUT = 30.0  # seconds an answer may take on a loaded CI machine


def get(url: str, **options: Any) -> httpx.Response:
    return httpx.get(url, **{"timeout": TIMEOUT, **options})


def post(url: str, **options: Any) -> httpx.Response:
    return httpx.post(url, **{"timeout": TIMEOUT, **options})


# -- servers ----------------------------------------------------------------------------------------


def serve(tmp: Path, *args: str, env: dict[str, str] | None = None, store: str | None = None,
          preexec: Callable[[], None] | None = None) -> ServerProcess:  # fmt: skip
    server = ServerProcess(
        args=["--store", store or f"sqlite:///{tmp}/tarefa.db", "--step-delay", "0", *args],
        port=free_port(),
        log_path=tmp / "server.log",
        env=env or {},
    )
    if preexec is None:
        server.start()
        return server
    original = subprocess.Popen.__init__

    def with_preexec(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, preexec_fn=preexec, **kw)

    subprocess.Popen.__init__ = with_preexec  # type: ignore[method-assign]
    try:
        server.start()
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]
    return server


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with 1 s read timeouts and a 1000-byte body limit (set through the environment)."""
    env = {"TAREFA_HEADER_TIMEOUT": "1", "TAREFA_BODY_TIMEOUT": "1", "TAREFA_MAX_BODY": "1000"}
    server = serve(tmp_path_factory.mktemp("quick"), env=env)
    yield server
    server.stop()


def exchange(server: ServerProcess, data: bytes, wait: float = 20.0) -> tuple[bytes, float]:
    """Send ``data`` on a new connection; what came back until the server closed it, and when."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - start


def parse(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def assert_spec_error(answer: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = parse(answer)
    assert (got, body["error"]["code"]) == (status, code), answer
    assert body["error"]["message"] and headers["request-id"] and headers["content-type"] == "application/json"
    return headers


# -- point 4 (and 10): every query parameter of the job routes, any value -----------------------------

WEIRD = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "2026-11-28T14:00:00+99:99",
            "٢٠٢٦-11-28T14:00:00Z",
            ">=2026-11-28T14:00:00Z",
            "5.0",
            "+3",
            "3 ",
            "*",
            "id,state",
            "queued|running",
            "create_time desc",
            "",
            "\x00",
            "%00",
        ]
    ),
)
CURSORS = st.one_of(
    st.text(max_size=30),
    st.lists(st.one_of(st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=5), st.booleans(), st.none()),
             max_size=3).map(lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).decode()),
)  # fmt: skip
JOB_PARAMS = ["poll_timeout", "last_modified", "fields", "unknown"]
LIST_PARAMS = ["state", "operation", "max_records", "order_by", "fields", "cursor"]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on each store, with one job (``server.job``) to read."""
    tmp = tmp_path_factory.mktemp(request.param)
    with postgres_database("tarefa_hardening") if request.param == "postgres" else _no_database() as url:
        server = serve(tmp, store=url)
        try:
            job = post(f"{server.url}/api/hosts", json={"name": "h1", "address": "10.0.0.1"}).json()["job"]
            server.env["job"] = job["id"]
            yield server
        finally:
            server.stop()


class _no_database:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def assert_no_fault(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    assert response.headers["request-id"]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"] and len(response.content) < 1000, response.text
    if response.status_code == 400:
        assert error["code"] == "invalid_parameter", response.text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(["list", "read", "cancel", "delete", "start"]),
    params=st.dictionaries(st.sampled_from([*JOB_PARAMS, *LIST_PARAMS, "return_timeout", "action"]), WEIRD, max_size=4),
    cursor=st.none() | CURSORS,
    job_id=st.sampled_from(["known", "no-such-job", "%00", "a" * 300]),
)
def test_no_query_parameter_value_is_a_server_error(
    any_store: ServerProcess, route: str, params: dict[str, str], cursor: str | None, job_id: str
) -> None:
    if cursor is not None:
        params["cursor"] = cursor
    job_url = f"{any_store.url}/api/jobs/{any_store.env['job'] if job_id == 'known' else job_id}"
    params.pop("poll_timeout", None) if params.get("poll_timeout", "").isdigit() else None  # no long waits
    request = {
        "list": ("GET", f"{any_store.url}/api/jobs"),
        "read": ("GET", job_url),
        "cancel": ("PATCH", job_url),
        "delete": ("DELETE", job_url),
        "start": ("POST", f"{any_store.url}/api/clusters/none/deploy"),
    }[route]
    assert_no_fault(httpx.request(*request, params=params, timeout=TIMEOUT))


def test_forged_cursors_and_extreme_timestamps_are_400s(any_store: ServerProcess) -> None:
    job_url = f"{any_store.url}/api/jobs/{any_store.env['job']}"
    for cursor in ["WzFlMzAsIngiXQ", *(base64.b64encode(b'[%d,"x"]' % n).decode() for n in (2**63 - 1, 2**70))]:
        answer = get(f"{any_store.url}/api/jobs", params={"cursor": cursor})
        assert (answer.status_code, answer.json()["error"]["target"]) == (400, "cursor")
    for stamp in ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-11-28T14:00:00+99:99"]:
        answer = get(job_url, params={"poll_timeout": "1", "last_modified": stamp})
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_parameter")


# -- point 5: the body limit ----------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(quick: ServerProcess) -> None:
    request = (
        b"POST /api/hosts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"
    )
    answer, took = exchange(quick, request)
    headers = assert_spec_error(answer, 413, "request_too_large")
    assert headers["connection"] == "close" and took < 10  # answered though the body never came


def test_a_chunked_body_is_cut_off_at_the_limit(quick: ServerProcess) -> None:
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    with socket.create_connection(("127.0.0.1", quick.port), timeout=20) as sock:
        sock.sendall(b"POST /api/hosts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 2)  # fmt: skip
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    assert_spec_error(answer, 413, "request_too_large")
    small = post(f"{quick.url}/api/hosts", json={"name": "small", "address": "10.0.0.2"})
    assert small.status_code == 202  # a body within the limit still goes through


def test_the_default_limit_is_one_mebibyte(any_store: ServerProcess) -> None:
    body = b'{"name": "big", "address": "' + b"a" * (1024 * 1024) + b'"}'
    answer = post(f"{any_store.url}/api/hosts", content=body, headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (413, "request_too_large")
    assert answer.headers["request-id"]


# -- point 6: read timeouts, descriptors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "reading"),
    [
        (b"GET /api/jobs HTTP/1.1\r\nHost: t\r\nX-Slow: ", "headers"),  # slowloris, stalled mid-header
        (
            b"POST /api/hosts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n"
            b"123456789",
            "body",
        ),
    ],
)
def test_a_request_that_stalls_is_answered_408_and_closed(quick: ServerProcess, request_bytes: bytes,
                                                          reading: str) -> None:  # fmt: skip
    answer, took = exchange(quick, request_bytes)
    assert_spec_error(answer, 408, "request_timeout")
    assert 0.9 <= took < 15
    assert f"request {reading} did not arrive in time" in quick.log()


def test_a_connection_that_sends_nothing_is_closed(quick: ServerProcess) -> None:
    answer, took = exchange(quick, b"")
    assert answer == b"" and 0.9 <= took < 15


class _Answers:
    """What the server sends on one connection, taken answer by answer: bytes of the next answer
    that arrive with one are kept for it, and a connection the server closes fails the test."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        piece = self.sock.recv(65536)
        assert piece, f"the server closed the connection; it had sent {self.buffer[:300]!r}"
        self.buffer += piece

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def answer(self) -> tuple[bytes, Any]:
        """The next answer's head and its JSON body (``content-length`` bytes)."""
        head = self.head()
        length = int(head.split(b"\r\ncontent-length: ")[1].split(b"\r\n")[0])
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head, json.loads(body)


def test_answers_leave_whole_for_every_shape_of_request(quick: ServerProcess) -> None:
    """The protocol sends an answer of known length in one write (issue 11): a HEAD answer, one
    after ``100 Continue``, pipelined answers and a stream's opening still arrive as HTTP says."""
    with socket.create_connection(("127.0.0.1", quick.port), timeout=TIMEOUT) as sock:
        answers = _Answers(sock)
        sock.sendall(b"HEAD /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n")  # no body follows
        head = answers.head()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) > 1000

        body = b'{"name": "whole-1", "address": "10.0.0.1"}'
        sock.sendall(b"POST /api/hosts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        assert answers.head() == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        head, accepted = answers.answer()
        assert head.startswith(b"HTTP/1.1 202 ")
        job = accepted["job"]
        assert job["state"] in ("queued", "running", "success")

        one = f"GET /api/jobs/{job['id']} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        sock.sendall(one * 3)  # pipelined: three answers, in order, each whole
        for _ in range(3):
            head, read = answers.answer()
            assert head.startswith(b"HTTP/1.1 200 ") and read["record"]["id"] == job["id"]
        assert answers.buffer == b""

    with socket.create_connection(("127.0.0.1", quick.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        opening = _Answers(sock).head()  # the head arrives before any event: the stream is open
        assert opening.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in opening


def test_descriptors_are_raised_to_the_hard_limit_and_their_exhaustion_is_logged(tmp_path: Path) -> None:
    def low_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 160))

    server = serve(tmp_path, "--workers", "0", preexec=low_limits)
    try:
        assert "file descriptors: limit 160 (was 64" in server.log()
        held = []
        for _ in range(200):
            try:
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
            except OSError:
                break
        deadline = time.monotonic() + 20
        while "new connections are refused (EMFILE)" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "new connections are refused (EMFILE)" in server.log()
        for sock in held:
            sock.close()
        time.sleep(0.5)
        assert get(f"{server.url}/api/jobs").status_code == 200  # and it recovers
    finally:
        server.stop()


# -- point 7: a 500 keeps the connection usable ------------------------------------------------------


def test_a_500_answers_with_the_spec_body_and_keeps_the_connection(tmp_path: Path) -> None:
    server = serve(tmp_path, "--app", "tests.e2e.apps.faulty:app")
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            fault = client.get("/api/fault")
            assert (fault.status_code, fault.json()["error"]["code"]) == (500, "internal_error")
            assert fault.headers.get("connection") != "close"
            rid = fault.headers["request-id"]
            assert client.get("/api/jobs").status_code == 200  # the same pooled connection
        assert client_connections(server) == 1
        assert f"[request-id {rid}]" in server.log() and "a bug in the application" in server.log()
    finally:
        server.stop()


def client_connections(server: ServerProcess) -> int:
    """Connections the server saw in the test above: one when the 500 kept it open."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /api/fault HTTP/1.1\r\nHost: t\r\n\r\nGET /api/jobs HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = b""
        while answer.count(b"HTTP/1.1 ") < 2:
            piece = sock.recv(65536)
            if not piece:
                return 2  # closed after the 500
            answer += piece
    return 1


# -- point 8: the server's own 400s -------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"get /api/jobs HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /api/jobs HTTP/1.1\r\nHost: t\r\nX-Bad: a\x01b\r\n\r\n",
        b"POST /api/hosts HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /api/jobs?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /api/jobs?" + b"&".join(b"p%d=1" % i for i in range(10_000)) + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
    ids=["lowercase method", "control character", "content-length and chunked", "64 KB URL", "10k parameters"],
)
def test_a_malformed_http_request_gets_the_spec_error_body(quick: ServerProcess, request_bytes: bytes) -> None:
    answer, _ = exchange(quick, request_bytes)
    headers = assert_spec_error(answer, 400, "invalid_request")
    assert headers["connection"] == "close"


# -- point 9: OpenAPI, body errors, Idempotency-Key -----------------------------------------------------


def test_the_openapi_document_names_every_answer_of_the_reference_service(any_store: ServerProcess) -> None:
    paths = get(f"{any_store.url}/openapi.json").json()["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"400", "413", "415"} <= codes("/api/hosts", "post")  # asynchronous, with a body
    for path, method in [("/api/clusters/{cluster_id}/deploy", "post"), ("/api/clusters/{cluster_id}", "delete")]:
        assert {"400", "404"} <= codes(path, method)  # asynchronous, with a path parameter
    assert "404" in codes("/api/hosts/{name}", "get") and "404" in codes("/api/clusters/{cluster_id}", "get")
    assert "409" in codes("/api/clusters", "post")


def test_body_errors_are_invalid_body_or_415(any_store: ServerProcess) -> None:
    url = f"{any_store.url}/api/hosts"
    not_utf8 = post(url, content=b'{"name": "\xff"}', headers={"Content-Type": "application/json"})
    assert (not_utf8.status_code, not_utf8.json()["error"]["code"]) == (400, "invalid_body")
    untyped = post(url, content=b'{"name": "h", "address": "a"}')
    assert (untyped.status_code, untyped.json()["error"]["code"]) == (415, "unsupported_media_type")


def test_idempotency_keys_are_utf8_and_sent_once(any_store: ServerProcess) -> None:
    url = f"{any_store.url}/api/hosts"
    host = {"name": "idem", "address": "10.0.0.9"}
    key = "chave-ñ-✓".encode()
    first = post(url, json=host, headers=[(b"Idempotency-Key", key)])
    again = post(url, json=host, headers=[(b"Idempotency-Key", key)])
    assert first.status_code == again.status_code == 202 and first.json()["job"]["id"] == again.json()["job"]["id"]
    for headers in ([(b"Idempotency-Key", b"\xe9")], [(b"Idempotency-Key", b"a"), (b"Idempotency-Key", b"b")]):
        refused = post(url, json={"name": "idem2", "address": "10.0.0.9"}, headers=headers)
        assert (refused.status_code, refused.json()["error"]["target"]) == (400, "Idempotency-Key")
    assert get(f"{any_store.url}/api/jobs", params={"operation": "host.register"}).json()["num_records"] >= 1


# -- point 10: strict and brief --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{"poll_timeout": "5.0"}, {"poll_timeout": "+3"}, {"poll_timeout": "3 "},
     {"poll_timeout": "1", "last_modified": "2026-11-28T14:00:00+99:99"},
     {"poll_timeout": "1", "last_modified": "٢٠٢٦-11-28T14:00:00Z"}],
)  # fmt: skip
def test_lenient_values_are_refused(any_store: ServerProcess, params: dict[str, str]) -> None:
    answer = get(f"{any_store.url}/api/jobs/{any_store.env['job']}", params=params)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_parameter")


def test_ten_thousand_unknown_fields_get_a_brief_answer(any_store: ServerProcess) -> None:
    fields = ",".join(f"n{i}" for i in range(10_000))  # 59 KB: within httpx's URL limit
    answer = get(f"{any_store.url}/api/jobs?fields={fields}")
    assert answer.status_code == 400 and len(answer.content) < 1000
