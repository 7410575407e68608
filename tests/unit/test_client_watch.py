"""``watch()``/``events()`` and the server-sent events parser, against scripted servers on
``httpx.MockTransport`` with a fake clock. Every behaviour test runs with :class:`Client` and with
:class:`AsyncClient` (on its httpx transport), which checks that both are the same steps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import orjson
import pytest

from tarefa.client import AsyncClient, Client, JobEvent, JobState, NotFound, ProtocolError, WaitTimeout
from tarefa.client.events import SseMessage, SseParser

URL = "http://deploy.test"
SSE = {"content-type": "text/event-stream; charset=utf-8"}
STATES = ["queued", "running", "running", "success"]


def event(seq: int, state: str = "running", job_id: str = "j1", **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "job_id": job_id, "time": f"2026-11-28T14:00:0{seq}.000000Z", "state": state,
            "message": state.capitalize(), "progress": None, **extra}  # fmt: skip


def frame(data: dict[str, Any]) -> bytes:
    return b"id: %d\nevent: job\ndata: %s\n\n" % (data["seq"], orjson.dumps(data))


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body sent in chunks; ``drop``: the connection breaks after the last one."""

    def __init__(self, chunks: list[bytes], drop: bool = False) -> None:
        self.chunks = chunks
        self.drop = drop
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.__iter__():
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class FakeTime:
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


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture(params=["sync", "async"])
def watcher(request: pytest.FixtureRequest, fake_time: FakeTime) -> Callable[..., Any]:
    """``watcher(handler, **options)`` → an object whose ``watch``/``events`` return lists."""

    def factory(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Any:
        options = {"clock": fake_time.clock, "random": lambda: 0.5, **options}
        transport = httpx.MockTransport(handler)
        if request.param == "sync":
            return SyncWatcher(Client(URL, transport=transport, sleep=fake_time.sleep, **options))
        return AsyncWatcher(AsyncClient(URL, transport=transport, sleep=fake_time.async_sleep, **options))

    return factory


class SyncWatcher:
    def __init__(self, client: Client) -> None:
        self.client = client

    def watch(self, *args: Any, limit: int | None = None, **kwargs: Any) -> list[JobEvent]:
        seen = []
        for found in self.client.watch(*args, **kwargs):
            seen.append(found)
            if limit is not None and len(seen) == limit:
                break
        return seen

    def events(self, *, limit: int, **kwargs: Any) -> list[JobEvent]:
        seen = []
        for found in self.client.events(**kwargs):
            seen.append(found)
            if len(seen) == limit:
                break
        return seen


class AsyncWatcher:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    def watch(self, *args: Any, limit: int | None = None, **kwargs: Any) -> list[JobEvent]:
        async def collect() -> list[JobEvent]:
            seen = []
            async for found in self.client.watch(*args, **kwargs):
                seen.append(found)
                if limit is not None and len(seen) == limit:
                    break
            return seen

        return anyio.run(collect)

    def events(self, *, limit: int, **kwargs: Any) -> list[JobEvent]:
        async def collect() -> list[JobEvent]:
            seen = []
            async for found in self.client.events(**kwargs):
                seen.append(found)
                if len(seen) == limit:
                    break
            return seen

        return anyio.run(collect)


# -- the wire format ------------------------------------------------------------------------------


def test_parser_reads_lines_split_anywhere_with_any_line_ending() -> None:
    wire = b': heartbeat\r\nid: 7\r\nevent: job\r\ndata: {"a":\r\ndata: 1}\r\n\r\nretry: 500\rdata: x\r\rdata: y\n\n'
    for size in (1, 2, 3, 5, len(wire)):
        parser = SseParser()
        messages = [m for start in range(0, len(wire), size) for m in parser.feed(wire[start : start + size])]
        assert messages == [SseMessage("job", '{"a":\n1}', "7"), SseMessage("message", "x", "7"),
                            SseMessage("message", "y", "7")]  # fmt: skip
        assert parser.retry == 500


def test_parser_dispatches_nothing_without_data_and_keeps_the_last_id() -> None:
    parser = SseParser()
    assert parser.feed(b"id: 3\n\n: comment\n\n") == []
    assert parser.feed(b"data:no space\n\n") == [SseMessage("message", "no space", "3")]


def test_an_event_that_is_not_spec_shaped_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="seq"):
        JobEvent.from_wire({"job_id": "j1", "seq": 0, "state": "queued"})
    with pytest.raises(ProtocolError, match="unknown job state"):
        JobEvent.from_wire(event(1, state="paused"))
    with pytest.raises(ProtocolError, match="not JSON"):
        JobEvent.from_message(SseMessage("job", "{", "1"))


# -- watch ----------------------------------------------------------------------------------------


def test_watch_resumes_a_dropped_stream_with_last_event_id_and_skips_repeats(watcher: Callable[..., Any]) -> None:
    seen: list[httpx.Request] = []
    bodies = [
        Chunks([b": hello\n\n", frame(event(1, "queued")), frame(event(2))[:9]], drop=False),  # ends mid-frame
        Chunks([frame(event(2)), frame(event(3))], drop=True),  # 2 again: the server resent it
        Chunks([frame(event(3)), frame(event(4, "success")), frame(event(5, "success"))]),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=SSE, stream=bodies[len(seen) - 1])

    events = watcher(handler).watch("j1", timeout=60)
    assert [(e.seq, e.state.value) for e in events] == [(1, "queued"), (2, "running"), (3, "running"), (4, "success")]
    assert [r.headers.get("last-event-id") for r in seen] == [None, "1", "3"]
    assert all(r.url.path == "/api/jobs/j1/events" and r.headers["accept"] == "text/event-stream" for r in seen)
    assert all(body.closed for body in bodies)


def test_watch_after_a_seq_sends_it_and_rides_out_a_restart(watcher: Callable[..., Any], fake_time: FakeTime) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("connection refused")
        if len(seen) == 2:
            return httpx.Response(503, json={"error": {"code": "stopping", "message": "restarting"}})
        return httpx.Response(200, headers=SSE, stream=Chunks([frame(event(9, "success"))]))

    events = watcher(handler).watch("j1", after=8)
    assert [e.seq for e in events] == [9]
    assert [r.headers.get("last-event-id") for r in seen] == ["8", "8", "8"]
    assert len(fake_time.sleeps) == 2


def test_watch_pauses_between_streams_that_end_without_news(watcher: Callable[..., Any], fake_time: FakeTime) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        chunks = [frame(event(1, "success"))] if len(calls) == 4 else [b": idle\n\n"]
        return httpx.Response(200, headers=SSE, stream=Chunks(chunks))

    assert [e.seq for e in watcher(handler).watch("j1")] == [1]
    first = fake_time.sleeps[0]
    assert first > 0 and fake_time.sleeps == [first, 2 * first, 4 * first]  # a growing backoff, no busy loop


def test_a_204_ends_the_watch_without_an_event(watcher: Callable[..., Any]) -> None:
    """The server's answer after the terminal event: nothing is left, nothing will come."""
    assert watcher(lambda request: httpx.Response(204)).watch("j1", after=6) == []


def test_stopping_early_closes_the_stream(watcher: Callable[..., Any]) -> None:
    body = Chunks([frame(event(1, "queued")), frame(event(2))])
    w = watcher(lambda request: httpx.Response(200, headers=SSE, stream=body))
    assert [e.seq for e in w.watch("j1", limit=1)] == [1]
    assert body.closed


def test_watch_times_out_with_the_last_state_seen(watcher: Callable[..., Any], fake_time: FakeTime) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        fake_time.now += 5
        return httpx.Response(200, headers=SSE, stream=Chunks([frame(event(1, "queued"))]))

    with pytest.raises(WaitTimeout) as timeout:
        watcher(handler).watch("j1", timeout=8)
    assert timeout.value.job.id == "j1" and timeout.value.job.state is JobState.QUEUED


JOB_VERSIONS = [("queued", None, "2026-11-28T14:00:00.000000Z"), ("running", 50, "2026-11-28T14:00:01.000000Z"),
                ("success", 100, "2026-11-28T14:00:02.000000Z")]  # fmt: skip


@pytest.mark.parametrize(
    "no_stream",
    [
        lambda: httpx.Response(404, json={"error": {"code": "not_found", "message": "no route"}}),
        lambda: httpx.Response(406, text="not acceptable"),
        lambda: httpx.Response(200, json={"num_records": 0, "records": []}),  # the JSON pages: Accept ignored
    ],
    ids=["404", "406", "200-json"],
)
def test_watch_without_streams_follows_the_job_with_long_polls(
    watcher: Callable[..., Any], no_stream: Callable[[], httpx.Response]
) -> None:
    polls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return no_stream()
        polls.append(request)
        state, progress, stamp = JOB_VERSIONS[min(len(polls) - 1, 2)]
        record = {"id": "j1", "state": state, "message": state, "progress": progress, "last_modified": stamp}
        return httpx.Response(200, json={"record": record})

    events = watcher(handler).watch("j1", timeout=60)
    assert [(e.seq, e.state.value, e.progress, e.time_text) for e in events] == [
        (None, state, progress, stamp) for state, progress, stamp in JOB_VERSIONS
    ]
    assert (
        "poll_timeout" not in polls[0].url.params and polls[1].url.params["poll_timeout"] == "60"
    )  # within the timeout


def test_a_watched_job_that_does_not_exist_is_not_found(watcher: Callable[..., Any]) -> None:
    missing = httpx.Response(404, json={"error": {"code": "not_found", "message": "no such job"}})
    with pytest.raises(NotFound):
        watcher(lambda request: missing).watch("nope")


# -- events ---------------------------------------------------------------------------------------


def test_events_reads_the_global_stream_with_filters(watcher: Callable[..., Any]) -> None:
    seen: list[httpx.Request] = []
    body = Chunks(
        [frame(event(3, "success", "a")), frame(event(4, "failure", "b", error={"code": "x", "message": "y"}))]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=SSE, stream=body)

    events = watcher(handler).events(state=["success", "failure"], operation="host.register", after=2, limit=2)
    assert [(e.job_id, e.seq) for e in events] == [("a", 3), ("b", 4)] and events[1].error is not None
    assert seen[0].url.path == "/api/events" and seen[0].headers["last-event-id"] == "2"
    assert dict(seen[0].url.params) == {"state": "success|failure", "operation": "host.register"}


def test_events_from_a_server_without_the_stream_is_an_error(watcher: Callable[..., Any]) -> None:
    with pytest.raises(NotFound):
        watcher(lambda request: httpx.Response(404, json={"error": {"code": "not_found", "message": "-"}})).events(
            limit=1
        )
    with pytest.raises(ProtocolError, match="not an event stream"):
        watcher(lambda request: httpx.Response(200, json={"records": []})).events(limit=1)
