"""uvicorn's HTTP/1.1 protocol (httptools) with read timeouts and SPEC error bodies.

uvicorn reads request headers and bodies with no time limit, so a client that sends a header a
minute (slowloris) or declares a body it never sends holds a connection, and a descriptor,
forever. This protocol gives each request ``header_timeout`` seconds from its first byte (or
from the connection's opening) to its last header line, and the body ``body_timeout`` seconds
between two pieces; then it answers ``408`` and closes. The server's own refusals of malformed
HTTP (uvicorn writes them in plain text) get the SPEC error body and a ``request-id`` (§6).

Memory (issue 11, W5): a connection holding a long poll keeps uvicorn's protocol and request
cycle alive for the whole wait. uvicorn gives each connection a ``deque`` for pipelined requests
and an :class:`asyncio.Event` for write flow control, and each request another ``Event``: three
``deque`` objects of 760 bytes each. This protocol uses a small list and :class:`_Event` (one
future at most, made only when someone waits) instead: the same behaviour, ~2 KB less per
connection.

An answer of known length goes out in one write, its head with its body (:class:`_OneSend`):
uvicorn writes them apart, which costs a second send and, for the client, a second wake-up.

The ``date`` header is made again when a request arrives in a new second (:class:`DateClock`),
not by a timer: it is never stale, and an idle server has nothing to wake for
(:class:`tarefa.serving.GracefulServer` does not run uvicorn's 0.1 s tick).

Use it with ``uvicorn.Config(http=protocol_class(ReadTimeouts(...)))``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import REQUEST_ID_HEADER, ApiError, new_request_id

if TYPE_CHECKING:
    from .held import HeldPolls

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ReadTimeouts:
    """Seconds a client gets to send its request headers, and between two pieces of its body."""

    header: float = DEFAULT_HEADER_TIMEOUT
    body: float = DEFAULT_BODY_TIMEOUT


class _Event:
    """What uvicorn uses of :class:`asyncio.Event` (``set``, ``clear``, ``is_set``, ``wait``), with
    no ``deque`` of waiters: each user has one waiter at most (the request's task), so a list is
    made only while some task waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None


class DateClock:
    """The second the ``date`` header of one server's answers was made for. uvicorn makes it on
    its 0.1 s tick, so it may be a second old; here the first request of each new second makes
    it (``formatdate``, once a second), and the others compare two integers."""

    __slots__ = ("second",)

    def __init__(self) -> None:
        self.second = -1

    def turn(self, now: float, state: Any, config: Any) -> None:
        """Make ``state.default_headers`` (uvicorn's, read by each new request) for ``now``."""
        self.second = int(now)
        date = [(b"date", formatdate(now, usegmt=True).encode())] if config.date_header else []
        state.default_headers = date + config.encoded_headers


class _OneSend:
    """The transport as a request cycle sees it: an answer of a known length goes out in one
    write. uvicorn writes the status line and headers as soon as the app sends
    ``http.response.start``, then the body: two sends, two TCP segments, and for the client two
    wake-ups for one answer. Here the header block of an answer with a ``content-length`` (but
    not to a ``HEAD``, which has no body) waits for the body's first write and goes with it; any
    other write passes straight through. One per connection; :meth:`begin` readies it for the
    next request's cycle."""

    __slots__ = ("_head", "_state", "transport")

    _BEFORE, _HOLDING, _THROUGH = 0, 1, 2

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._head: bytes | None = None
        self._state = self._THROUGH

    def begin(self, method: str) -> None:
        """A new request's cycle starts (the previous answer is complete)."""
        self._head = None
        self._state = self._THROUGH if method == "HEAD" else self._BEFORE

    def write(self, data: bytes) -> None:
        state = self._state
        if state == self._BEFORE and not data.startswith(b"HTTP/1.1 1"):  # not a 100 Continue
            if b"\r\ncontent-length: " in data:  # uvicorn writes header names in lower case
                self._head, self._state = data, self._HOLDING
                return
            self._state = self._THROUGH
        elif state == self._HOLDING:
            data, self._head, self._state = self._head + data, None, self._THROUGH  # type: ignore[operator]
        self.transport.write(data)

    def close(self) -> None:
        head, self._head, self._state = self._head, None, self._THROUGH
        if head is not None and not self.transport.is_closing():  # not to a client already gone
            self.transport.write(head)
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class _Pipeline(list):  # type: ignore[type-arg]
    """uvicorn's pipelined requests (it uses ``appendleft``, ``pop`` and truth) in a list."""

    __slots__ = ()

    def appendleft(self, item: object) -> None:
        self.insert(0, item)


def protocol_class(timeouts: ReadTimeouts, held: HeldPolls | None = None) -> type[TimedHttpProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with these timeouts; with ``held``
    (:meth:`HeldPolls.of <tarefa.http.held.HeldPolls.of>` the app), long polls are parked
    without a task and asynchronous calls skip the app's middleware stack (:mod:`tarefa.http.held`)."""
    attributes = {"timeouts": timeouts, "held": held, "clock": DateClock()}
    return type("TimedHttpProtocol", (TimedHttpProtocol,), attributes)


def raw_error(error: ApiError) -> bytes:
    """A whole HTTP/1.1 answer with the SPEC body and ``Connection: close``, as bytes."""
    body = orjson.dumps(error.body())
    head = (
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\ncache-control: no-store\r\n"
        f"{REQUEST_ID_HEADER}: {new_request_id()}\r\nconnection: close\r\n\r\n"
    )
    return STATUS_LINE[error.status] + head.encode() + body


class TimedHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with header and body read timeouts and SPEC error bodies."""

    # uvicorn's attributes (and ours) in slots: its ~30 attributes, some first set after
    # __init__, make each connection's instance dict a combined one of ~2 KB (issue 11, W5).
    __slots__ = (
        "_read_timer", "access_log", "access_logger", "app", "app_state", "asgi_version", "client", "config",
        "connections", "cycle", "expect_100_continue", "flow", "headers", "limit_concurrency", "logger", "loop",
        "parked", "parser", "pipeline", "root_path", "scheme", "scope", "sender", "server", "server_state", "tasks",
        "timeout_keep_alive", "timeout_keep_alive_task", "transport", "url", "ws_protocol_class",
    )  # fmt: skip
    timeouts = ReadTimeouts()
    held: HeldPolls | None = None
    clock = DateClock()  # one per server: protocol_class makes a class for each

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        #: The long poll parked on this connection (:mod:`tarefa.http.held`), if any.
        self.parked: Any = None

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        sender = self.sender
        sender.begin(cycle.scope["method"])
        cycle.transport = sender
        held = self.held
        if held is not None and app is self.app:
            if held.takes(cycle.scope):
                context = contextvars.Context() if self.config.reset_contextvars else None
                task = self.loop.create_task(held.start(self, cycle, app), context=context)
                task.add_done_callback(self.tasks.discard)
                self.tasks.add(task)
                return
            app = held.direct(cycle.scope, app) or app
        super()._start_asgi_task(cycle, app)

    def start_answer(self, cycle: Any, app: Any) -> None:
        """Answer ``cycle`` with ``app`` in a new task, as uvicorn starts a request's."""
        super()._start_asgi_task(cycle, app)

    def _arm(self, seconds: float, reading: str) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out, reading)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.sender = _OneSend(transport)
        writable = _Event()
        writable.set()
        self.flow._is_writable_event = writable  # type: ignore[assignment]
        self._arm(self.timeouts.header, "connection")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        parked, self.parked = self.parked, None
        if parked is not None:
            parked.cancel()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.timeouts.header, "headers")

    def on_headers_complete(self) -> None:
        self._arm(self.timeouts.body, "body")
        now = time.time()
        if int(now) != self.clock.second:
            self.clock.turn(now, self.server_state, self.config)
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new cycle, its task not yet run: nothing waits on its Event
            self.cycle.message_event = _Event()  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self._arm(self.timeouts.body, "body")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _read_timed_out(self, reading: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if reading == "connection":  # a connection that never sent a byte: nothing to answer
            self.transport.close()
            return
        cycle = self.cycle if reading == "body" else None
        if cycle is None or not cycle.response_started:
            seconds = self.timeouts.header if reading == "headers" else self.timeouts.body
            message = f"the request {reading} did not arrive within {seconds:g} s; send the whole request at once"
            self.transport.write(raw_error(ApiError(408, "request_timeout", message)))
        if cycle is not None:
            cycle.disconnected = True  # the application's receive() now gets http.disconnect
            cycle.message_event.set()
        self.logger.info("closed a connection whose request %s did not arrive in time", reading)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        message = "the request is not valid HTTP/1.1 (request line, headers or framing); it was not processed"
        self.transport.write(raw_error(ApiError(400, "invalid_request", message)))
        self.transport.close()
