"""The client against scripted Deploy-style servers on httpx.MockTransport and a fake clock.

Every behaviour test runs twice, with :class:`Client` and with :class:`AsyncClient` (driven by
``anyio.run``), which checks that both are the same steps. No network, no real sleeping.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import orjson
import pytest

from tarefa.client import (
    ApiError,
    AsyncClient,
    Backoff,
    Client,
    Conflict,
    Job,
    JobFailed,
    JobState,
    NotFound,
    ProtocolError,
    RetryNotice,
    TransportFailure,
    Unauthorized,
    WaitTimeout,
)
from tarefa.model import format_timestamp, parse_timestamp

URL = "http://deploy.test"
T0 = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
Handler = Callable[[httpx.Request], httpx.Response]


def stamp(seconds: float) -> str:
    return format_timestamp(T0 + timedelta(seconds=seconds))


def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    content = b"" if body is None else orjson.dumps(body)
    return httpx.Response(status, content=content, headers={k.replace("_", "-"): v for k, v in headers.items()})


def error(status: int, code: str, message: str, target: str | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": message, **({"target": target} if target else {})}}
    return answer(status, body, request_id="req-1")


def job(job_id: str = "j1", state: str = "queued", at: float = 0.0, **fields: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "operation": "host.register",
        "state": state,
        "message": fields.pop("message", state.capitalize()),
        "progress": fields.pop("progress", None),
        "create_time": stamp(0),
        "last_modified": stamp(at),
        "_links": {"self": {"href": f"/api/jobs/{job_id}"}},
        **fields,
    }


class FakeTime:
    """A monotonic clock that only moves when someone sleeps or a fake server holds a poll."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@dataclass
class Timeline:
    """A server with one job whose versions appear at given times on the fake clock; a long poll
    is held until the next version or ``poll_timeout``, unless ``holds_polls`` is false."""

    time: FakeTime
    versions: list[tuple[float, str, str, int | None]]
    holds_polls: bool = True
    retry_after: str | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def current(self) -> dict[str, Any]:
        elapsed = self.time.now - 100.0
        at, state, message, progress = [v for v in self.versions if v[0] <= elapsed][-1]
        return job(state=state, at=at, message=message, progress=progress)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        poll = request.url.params.get("poll_timeout")
        if poll and self.holds_polls:
            self.hold(int(poll), request.url.params.get("last_modified"))
        standard = not (poll and self.holds_polls)
        headers = {"retry_after": self.retry_after} if self.retry_after and standard else {}
        return answer(200, {"record": self.current()}, **headers)

    def hold(self, seconds: int, since: str | None) -> None:
        baseline = parse_timestamp(since or self.current()["last_modified"])
        if parse_timestamp(self.current()["last_modified"]) > baseline or self.current()["state"] in (
            "success",
            "failure",
        ):
            return
        later = [at + 100.0 for at, *_ in self.versions if at + 100.0 > self.time.now]
        self.time.now = min([self.time.now + seconds, *later])

    @property
    def polls(self) -> list[httpx.Request]:
        return [r for r in self.requests if "poll_timeout" in r.url.params]


class BlockingAsync:
    """Runs each :class:`AsyncClient` call to the end with ``anyio.run``, so that one test body
    checks both clients."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: anyio.run(functools.partial(method, *args, **kwargs))

    def list(self, **kwargs: Any) -> Iterator[Job]:
        async def collect() -> list[Job]:
            return [found async for found in self.client.list(**kwargs)]

        return iter(anyio.run(collect))

    def close(self) -> None:
        anyio.run(self.client.aclose)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest, fake_time: FakeTime) -> Iterator[Callable[..., Any]]:
    opened: list[Any] = []

    def factory(handler: Handler, url: str = URL, **options: Any) -> Any:
        options = {"clock": fake_time.clock, "random": lambda: 0.5, **options}
        transport = httpx.MockTransport(handler)
        if request.param == "sync":
            client: Any = Client(url, transport=transport, sleep=fake_time.sleep, **options)
        else:
            client = BlockingAsync(AsyncClient(url, transport=transport, sleep=fake_time.async_sleep, **options))
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


# -- submit -------------------------------------------------------------------------------------


def test_submit_reads_202_job_and_sends_an_idempotency_key(connect: Callable[..., Any]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(202, {"job": job()}, location="/api/jobs/j1", retry_after="1")

    submitted = connect(handler).submit("POST", "/api/hosts", {"name": "h1", "address": "10.0.0.1"})
    assert (submitted.id, submitted.state, submitted.self_href) == ("j1", JobState.QUEUED, "/api/jobs/j1")
    assert orjson.loads(seen[0].content) == {"name": "h1", "address": "10.0.0.1"}
    assert seen[0].headers["content-type"] == "application/json"
    assert len(seen[0].headers["idempotency-key"]) >= 16


def test_submit_with_return_timeout_reads_200_terminal_job(connect: Callable[..., Any]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(200, {"job": job(state="success", at=1, result={"name": "h1"})})

    done = connect(handler).submit("POST", "/api/hosts", {"name": "h1"}, return_timeout=30)
    assert done.is_terminal and done.result == {"name": "h1"}
    assert seen[0].url.params["return_timeout"] == "30"
    assert seen[0].extensions["timeout"]["read"] > 30


def test_submit_uses_location_when_the_job_has_no_links(connect: Callable[..., Any]) -> None:
    partial = {"id": "j9"}  # what ONTAP Select Deploy answers: only the id (and maybe links)
    submitted = connect(lambda r: answer(202, {"job": partial}, location="/api/v3/jobs/j9")).submit(
        "POST", "/api/hosts"
    )
    assert submitted.self_href == "/api/v3/jobs/j9" and not submitted.is_complete


def test_submit_of_a_synchronous_call_is_a_protocol_error(connect: Callable[..., Any]) -> None:
    client = connect(lambda r: answer(201, {"record": {"id": "c1", "name": "c"}}))
    with pytest.raises(ProtocolError, match="without a job"):
        client.submit("POST", "/api/clusters", {"name": "c"})


def test_retried_submit_after_dropped_connection_reuses_the_key(
    connect: Callable[..., Any], fake_time: FakeTime
) -> None:
    keys: list[str] = []
    created: dict[str, dict[str, Any]] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers["idempotency-key"]
        keys.append(key)
        created.setdefault(key, job(f"job{len(created)}"))
        if len(keys) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return answer(202, {"job": created[key]})

    submitted = connect(handler).submit("POST", "/api/hosts", {"name": "h1"})
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(created) == 1 and submitted.id == "job0"
    assert len(fake_time.sleeps) == 1


def test_caller_key_is_sent_and_reused_on_502(connect: Callable[..., Any]) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        return answer(502) if len(keys) < 3 else answer(202, {"job": job()})

    connect(handler).submit("POST", "/api/hosts", idempotency_key="deploy-h1")
    assert keys == ["deploy-h1"] * 3


def test_post_without_key_is_not_replayed_after_it_may_have_arrived(connect: Callable[..., Any]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadError("connection reset")

    with pytest.raises(TransportFailure, match="connection reset") as failure:
        connect(handler).submit("POST", "/api/hosts", idempotency_key=False)
    assert len(calls) == 1 and "idempotency-key" not in calls[0].headers
    assert failure.value.attempts == 1


def test_post_without_key_is_retried_when_the_connection_was_refused(connect: Callable[..., Any]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused")
        return answer(202, {"job": job()})

    assert connect(handler).submit("POST", "/api/hosts", idempotency_key=False).id == "j1"
    assert len(calls) == 3


# -- retries and backoff ------------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    answers = iter([answer(429, retry_after="3"), answer(503, retry_after="7"), answer(200, {"record": job()})])
    assert connect(lambda r: next(answers)).get("j1").id == "j1"
    assert fake_time.sleeps == [3.0, 7.0]


def test_retry_after_http_date_is_honoured(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    answers = iter([answer(503, retry_after=later), answer(200, {"record": job()})])
    connect(lambda r: next(answers)).get("j1")
    assert 25 <= fake_time.sleeps[0] <= 31


def test_backoff_is_exponential_with_jitter_and_capped(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    backoff = Backoff(first=1.0, factor=2.0, cap=8.0, jitter=0.5)
    with pytest.raises(TransportFailure, match="connection refused") as failure:
        connect(refuse, retry_for=30.0, backoff=backoff).get("j1")
    assert fake_time.sleeps[:5] == [0.75, 1.5, 3.0, 6.0, 6.0]  # random() = 0.5: x0.75
    assert sum(fake_time.sleeps) == pytest.approx(30.0)
    assert failure.value.attempts == len(fake_time.sleeps) + 1


def test_call_timeout_bounds_the_retries(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    with pytest.raises(ApiError) as failure:
        connect(lambda r: answer(503)).get("j1", timeout=5.0)
    assert failure.value.status == 503
    assert sum(fake_time.sleeps) == pytest.approx(5.0)


def test_retry_after_beyond_the_deadline_gives_up_at_once(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    with pytest.raises(ApiError, match="429"):
        connect(lambda r: answer(429, retry_after="60")).get("j1", timeout=10)
    assert fake_time.sleeps == []


def test_client_errors_are_not_retried(connect: Callable[..., Any]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return error(400, "invalid_field", "address is not an IP address", "address")

    with pytest.raises(ApiError) as failure:
        connect(handler).submit("POST", "/api/hosts", {"address": "x"})
    assert len(calls) == 1
    assert (failure.value.status, failure.value.code, failure.value.target) == (400, "invalid_field", "address")


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"), [(401, Unauthorized), (403, Unauthorized), (404, NotFound), (409, Conflict), (422, ApiError)]
)
def test_error_statuses_map_to_typed_exceptions(connect: Callable[..., Any], status: int, kind: type[ApiError]) -> None:
    with pytest.raises(kind) as failure:
        connect(lambda r: error(status, "some_code", "what is wrong", "id")).get("j1")
    assert type(failure.value) is kind
    assert (failure.value.status, failure.value.code, failure.value.message) == (status, "some_code", "what is wrong")
    assert failure.value.target == "id" and failure.value.request_id == "req-1"
    assert str(failure.value) == f"{status} some_code: what is wrong (target: id)"


def test_error_without_json_body_still_has_code_and_message(connect: Callable[..., Any]) -> None:
    response = httpx.Response(500, text="<html>Internal Server Error</html>")
    with pytest.raises(ApiError) as failure:
        connect(lambda r: response).get("j1")
    assert failure.value.code == "internal_server_error"
    assert failure.value.message == "<html>Internal Server Error</html>"


def test_answer_that_is_not_json_is_a_protocol_error(connect: Callable[..., Any]) -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        connect(lambda r: httpx.Response(200, text="hello")).get("j1")


def test_unknown_state_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown job state 'paused'"):
        Job.from_wire({"id": "j1", "state": "paused"})


# -- reading jobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ["record", "job", None])
def test_get_accepts_record_job_and_bare_bodies(connect: Callable[..., Any], envelope: str | None) -> None:
    body = job(state="running", at=2.5, progress=40, message="Checking")
    got = connect(lambda r: answer(200, {envelope: body} if envelope else body)).get("j1")
    assert (got.state, got.progress, got.message, got.operation) == (JobState.RUNNING, 40, "Checking", "host.register")
    assert got.last_modified == T0 + timedelta(seconds=2.5)
    assert got.last_modified_text == stamp(2.5) and got.raw == body


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T14:00:00Z", datetime(2026, 11, 28, 14, tzinfo=UTC)),
        ("2026-11-28T14:00:00.5Z", datetime(2026, 11, 28, 14, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-28T14:00:00.123456Z", datetime(2026, 11, 28, 14, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-28T14:00:00.123456789Z", datetime(2026, 11, 28, 14, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-28t15:00:00.25+01:00", datetime(2026, 11, 28, 14, 0, 0, 250000, tzinfo=UTC)),
        ("2026-11-28T14:00:00", datetime(2026, 11, 28, 14, tzinfo=UTC)),
        ("yesterday", None),
    ],
)
def test_job_timestamps_of_any_precision_are_read_as_utc(text: str, expected: datetime | None) -> None:
    parsed = Job.from_wire({"id": "j1", "last_modified": text, "create_time": text})
    assert parsed.last_modified == expected and parsed.create_time == expected
    assert parsed.last_modified_text == text  # what a long poll echoes, untouched


def test_job_parsing_keeps_error_result_and_resource() -> None:
    failed = Job.from_wire(
        job(state="failure", error={"code": "host_unreachable", "message": "no route"}, resource={"href": "/h/1"})
    )
    assert failed.is_terminal and failed.error is not None and failed.error.code == "host_unreachable"
    assert failed.resource_href == "/h/1" and failed.end_time is None


def test_paths_and_hrefs_resolve_against_the_base_url(connect: Callable[..., Any]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return answer(200, {"record": job()})

    client = connect(handler, url="https://deploy.test/api/", jobs_path="v3/jobs", auth=("admin", "secret"))
    client.get("j 1")
    client.get(Job.from_wire(job("j2")))
    assert seen == ["https://deploy.test/api/v3/jobs/j%201", "https://deploy.test/api/jobs/j2"]


def test_basic_auth_is_sent(connect: Callable[..., Any]) -> None:
    seen: list[httpx.Request] = []
    client = connect(lambda r: seen.append(r) or answer(200, {"record": job()}), auth=("admin", "secret"))
    client.get("j1")
    assert seen[0].headers["authorization"] == "Basic YWRtaW46c2VjcmV0"


def test_list_follows_next_links_and_filters_first_page(connect: Callable[..., Any]) -> None:
    seen: list[httpx.URL] = []
    pages = {
        None: ([job("a"), job("b")], "/api/jobs?cursor=c1"),
        "c1": ([job("c")], "/api/jobs?cursor=c2"),
        "c2": ([job("d")], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        records, following = pages[request.url.params.get("cursor")]
        links = {"next": {"href": following}} if following else {}
        return answer(200, {"num_records": len(records), "records": records, "_links": links})

    client = connect(handler)
    found = list(client.list(state=["queued", JobState.RUNNING], operation="host.register", max_records=2))
    assert [j.id for j in found] == ["a", "b", "c", "d"]
    assert dict(seen[0].params) == {"state": "queued|running", "operation": "host.register", "max_records": "2"}
    assert [dict(url.params) for url in seen[1:]] == [{"cursor": "c1"}, {"cursor": "c2"}]


def test_cancel_patches_and_delete_deletes(connect: Callable[..., Any]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "PATCH":
            return answer(202, {"job": job(state="failure", error={"code": "cancelled", "message": "x"})})
        return answer(204)

    client = connect(handler)
    assert client.cancel("j1").error.code == "cancelled"
    assert client.delete("j1") is None
    assert [(r.method, str(r.url)) for r in seen] == [
        ("PATCH", f"{URL}/api/jobs/j1?action=cancel"),
        ("DELETE", f"{URL}/api/jobs/j1"),
    ]


def test_cancel_of_terminal_job_is_conflict(connect: Callable[..., Any]) -> None:
    with pytest.raises(Conflict, match="already ended"):
        connect(lambda r: error(409, "job_terminal", "job already ended")).cancel("j1")


# -- waiting ------------------------------------------------------------------------------------

REGISTER = [
    (0.0, "queued", "Queued", None),
    (5.0, "running", "Checking host", 10),
    (10.0, "running", "Registering", 60),
    (15.0, "success", "Registered", 100),
]


def test_wait_long_polls_and_reports_each_change_in_order(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    server = Timeline(fake_time, REGISTER)
    seen: list[Job] = []
    done = connect(server.handler).wait("j1", poll_timeout=30, on_change=seen.append)
    assert done.state is JobState.SUCCESS and fake_time.now - 100 == 15.0
    assert [(j.state.value, j.message, j.progress) for j in seen] == [(s, m, p) for _, s, m, p in REGISTER]
    assert [dict(r.url.params) for r in server.polls] == [
        {"poll_timeout": "30", "last_modified": stamp(at)} for at, *_ in REGISTER[:3]
    ]
    assert fake_time.sleeps == []


def test_wait_echoes_last_modified_exactly_as_sent(connect: Callable[..., Any]) -> None:
    odd = "2026-11-28T14:00:00.1234567+00:00"
    answers = iter([answer(200, {"record": job(last_modified=odd)}), answer(200, {"record": job(state="success")})])
    seen: list[httpx.Request] = []
    connect(lambda r: seen.append(r) or next(answers)).wait("j1")
    assert seen[1].url.params["last_modified"] == odd


@pytest.mark.parametrize("poll_timeout", [1, 5, 120])
def test_read_timeout_is_longer_than_poll_timeout(
    connect: Callable[..., Any], fake_time: FakeTime, poll_timeout: int
) -> None:
    server = Timeline(fake_time, REGISTER)
    connect(server.handler, http_timeout=2.0).wait("j1", poll_timeout=poll_timeout)
    assert server.polls
    for poll in server.polls:
        assert poll.extensions["timeout"]["read"] > int(poll.url.params["poll_timeout"])


EVERY_5S_FOR_60S = [
    (float(t), "running" if 0 < t < 60 else ("queued" if t == 0 else "success"), f"Step {t // 5}", t * 100 // 60)
    for t in range(0, 61, 5)
]


def test_no_busy_loop_against_a_server_that_ignores_poll_timeout(
    connect: Callable[..., Any], fake_time: FakeTime
) -> None:
    server = Timeline(fake_time, EVERY_5S_FOR_60S, holds_polls=False)
    seen: list[Job] = []
    done = connect(server.handler).wait("j1", on_change=seen.append)
    assert done.state is JobState.SUCCESS and len(seen) == len(EVERY_5S_FOR_60S)
    # Time only moved by the client's sleeps: 60 s of job in at most ~1.2 requests per second,
    # and never two polls in a row without a pause of at least 0.1 s.
    assert fake_time.now - 100 >= 60.0
    assert len(server.requests) <= 72
    assert min(fake_time.sleeps) >= 0.1
    assert len(fake_time.sleeps) >= len(server.polls) - len(EVERY_5S_FOR_60S)


def test_ignored_long_poll_paces_by_retry_after(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    server = Timeline(fake_time, EVERY_5S_FOR_60S, holds_polls=False, retry_after="2")
    connect(server.handler).wait("j1")
    assert set(fake_time.sleeps) == {2.0}
    assert len(server.requests) <= 32


def test_a_server_holding_polls_costs_one_request_per_change(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    server = Timeline(fake_time, EVERY_5S_FOR_60S)
    connect(server.handler).wait("j1")
    assert len(server.requests) == len(EVERY_5S_FOR_60S) and fake_time.sleeps == []


def test_wait_timeout_carries_the_last_job_and_shortens_the_last_poll(
    connect: Callable[..., Any], fake_time: FakeTime
) -> None:
    server = Timeline(fake_time, [(0.0, "running", "Working", 5)])
    with pytest.raises(WaitTimeout) as failure:
        connect(server.handler).wait("j1", timeout=50, poll_timeout=30)
    assert failure.value.job.state is JobState.RUNNING and failure.value.timeout == 50
    assert [r.url.params["poll_timeout"] for r in server.polls] == ["30", "20"]
    assert fake_time.now - 100 == 50


def test_wait_rides_out_an_outage(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    server = Timeline(fake_time, REGISTER)
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if 3 <= calls <= 5:
            raise httpx.ConnectError("connection refused")
        return server.handler(request)

    seen: list[Job] = []
    done = connect(flaky).wait("j1", on_change=seen.append)
    assert done.state is JobState.SUCCESS and len(fake_time.sleeps) == 4
    assert [j.message for j in seen] == [m for _, _, m, _ in REGISTER]


def test_wait_outlasts_retry_for_until_its_own_timeout(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    server = Timeline(fake_time, REGISTER)
    down_until = fake_time.now + 300  # a five-minute outage, far past retry_for

    def outage(request: httpx.Request) -> httpx.Response:
        if fake_time.now < down_until:
            raise httpx.ConnectError("connection refused")
        return server.handler(request)

    done = connect(outage, retry_for=10.0).wait("j1")
    assert done.state is JobState.SUCCESS and fake_time.now >= down_until
    with pytest.raises(TransportFailure):  # a single call still gives up after retry_for
        down_until = fake_time.now + 300
        connect(outage, retry_for=10.0).get("j1")


def test_wait_from_a_complete_job_starts_with_a_long_poll(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    server = Timeline(fake_time, REGISTER)
    seen: list[Job] = []
    connect(server.handler).wait(Job.from_wire(job()), on_change=seen.append)
    assert len(server.requests) == len(server.polls) == 3
    assert seen[0].state is JobState.QUEUED


def test_wait_from_a_partial_job_reads_it_first(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    server = Timeline(fake_time, REGISTER)
    connect(server.handler).wait(Job.from_wire({"id": "j1"}, location="/api/jobs/j1"))
    assert "poll_timeout" not in server.requests[0].url.params and len(server.polls) == 3


def test_job_deleted_during_wait_is_not_found(connect: Callable[..., Any]) -> None:
    answers = iter([answer(200, {"record": job()}), error(404, "not_found", "no job j1", "id")])
    with pytest.raises(NotFound):
        connect(lambda r: next(answers)).wait("j1")


def test_poll_timeout_out_of_range_is_refused(connect: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="between 1 and 120"):
        connect(lambda r: answer(200, {"record": job()})).wait("j1", poll_timeout=121)


def run_server(fake_time: FakeTime, final: dict[str, Any]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return answer(202, {"job": job()})
        fake_time.now += 1
        return answer(200, {"record": final})

    return handler


def test_run_raises_job_failed_with_the_job(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    failed = job(state="failure", at=1, error={"code": "host_unreachable", "message": "no route to 192.0.2.1"})
    with pytest.raises(JobFailed) as failure:
        connect(run_server(fake_time, failed)).run("POST", "/api/hosts", {"name": "h"})
    assert failure.value.code == "host_unreachable" and failure.value.job.state is JobState.FAILURE
    assert "no route to 192.0.2.1" in str(failure.value)


def test_run_can_return_the_failed_job(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    failed = job(state="failure", at=1, error={"code": "boom", "message": "boom"})
    done = connect(run_server(fake_time, failed)).run("POST", "/api/hosts", raise_on_failure=False)
    assert done.state is JobState.FAILURE


def test_run_returns_the_successful_job(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    ok = job(state="success", at=1, result={"id": "h1"})
    assert connect(run_server(fake_time, ok)).run("POST", "/api/hosts").result == {"id": "h1"}


# -- asynchronous specifics ---------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_on_change_may_be_a_coroutine(fake_time: FakeTime) -> None:
    server = Timeline(fake_time, REGISTER)
    seen: list[str] = []

    async def on_change(changed: Job) -> None:
        await anyio.sleep(0)
        seen.append(changed.message)

    transport = httpx.MockTransport(server.handler)
    async with AsyncClient(URL, transport=transport, clock=fake_time.clock, sleep=fake_time.async_sleep) as client:
        done = await client.wait("j1", on_change=on_change)
    assert done.state is JobState.SUCCESS
    assert seen == [m for _, _, m, _ in REGISTER]


@pytest.mark.anyio
async def test_async_wait_can_be_cancelled() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with AsyncClient(URL, transport=httpx.MockTransport(hang)) as client:
        with anyio.move_on_after(0.05) as scope:
            await client.wait("j1")
    assert scope.cancelled_caught


def test_an_undecodable_body_is_a_transport_failure_not_retried(connect: Callable[..., Any]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.DecodingError("bad gzip")

    with pytest.raises(TransportFailure, match="bad gzip"):
        connect(handler).get("j1")
    assert len(calls) == 1


def test_each_retry_is_told_at_once_with_its_reason(connect: Callable[..., Any], fake_time: FakeTime) -> None:
    notices: list[RetryNotice] = []
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused")
        if len(calls) == 2:
            return answer(503, {"error": {"code": "store_unavailable", "message": "busy"}})
        return answer(200, {"record": job()})

    assert connect(handler, on_retry=notices.append).get("j1").id == "j1"
    assert [(n.method, n.attempt) for n in notices] == [("GET", 1), ("GET", 2)]
    assert notices[0].reason == "connection refused" and notices[0].url == f"{URL}/api/jobs/j1"
    assert notices[1].reason == "the server answered 503 Service Unavailable"
    assert [n.delay for n in notices] == fake_time.sleeps


def test_a_server_without_tls_is_not_retried_and_the_message_says_so(connect: Callable[..., Any]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        error = httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
        raise error from ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")

    with pytest.raises(TransportFailure) as failure:
        connect(handler, url="https://127.0.0.1:8080").get("j1")
    assert len(calls) == 1 and failure.value.attempts == 1
    assert str(failure.value).endswith("(the server does not speak TLS here: use http://)")
    assert "attempts" not in str(failure.value)
