"""Effects and the two drivers that perform them.

The client's logic (:mod:`tarefa.client.core`) is written once, as generators that *yield*
effects instead of doing I/O: "send this HTTP request", "read the next bytes of this stream",
"sleep this long", "tell the caller about this job", "hand this event to the caller". A driver
runs such a generator to the end, performing each effect and sending the outcome back in.
:func:`run_steps` and :func:`iterate_steps` perform them with a blocking :class:`Http`
(:mod:`tarefa.client.http_httpx`) and :func:`time.sleep`; :func:`run_steps_async` and
:func:`iterate_steps_async` with an asynchronous one (:mod:`tarefa.client.http_aiohttp`, or httpx)
and an async sleep. A request that gets no answer is a :class:`RequestFailure` thrown back into
the generator, which decides whether to retry; nothing else is.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

from .job import Job

T = TypeVar("T")


class Answer(Protocol):
    """An HTTP answer, body read: what the steps see of a response, whatever the library.
    (:class:`httpx.Response` is one.)"""

    @property
    def status_code(self) -> int: ...
    @property
    def reason_phrase(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...  # case-insensitive
    @property
    def content(self) -> bytes: ...


class RequestFailure(Exception):
    """A request that got no answer. ``unsent``: it surely never reached the server (the
    connection could not be opened); ``final``: sending it again would fail the same way (a TLS
    failure, an undecodable body); ``cause``: the library's own exception."""

    def __init__(self, reason: str, *, unsent: bool, final: bool, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unsent = unsent
        self.final = final
        self.cause = cause


@dataclass(frozen=True, slots=True)
class HttpCall:
    """Send one HTTP request; the outcome is an :class:`Answer` (body read) or a
    :class:`RequestFailure` thrown into the steps.

    With ``stream``, an answer ``200`` of type ``text/event-stream`` comes back as an
    :class:`OpenStream` with its body unread (read it with :class:`ReadStream`); any other
    answer is read whole as usual."""

    method: str
    url: str
    read_timeout: float
    connect_timeout: float
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None
    stream: bool = False


class OpenStream(Protocol):
    """An answer whose body is a stream still being sent."""

    @property
    def status_code(self) -> int: ...
    @property
    def reason_phrase(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...  # always b"": the body is read with ReadStream


@dataclass(frozen=True, slots=True)
class ReadStream:
    """Read the next bytes of an open stream: ``b""`` once it has ended."""

    stream: OpenStream


@dataclass(frozen=True, slots=True)
class CloseStream:
    """Close an open stream (a driver also closes, at the end, every stream left open)."""

    stream: OpenStream


@dataclass(frozen=True, slots=True)
class Sleep:
    """Pause for ``seconds``."""

    seconds: float


ChangeCallback: TypeAlias = Callable[[Job], object]
"""Called with each new version of a job; an async client awaits what it returns if awaitable."""


@dataclass(frozen=True, slots=True)
class Notify:
    """Call the caller's ``callback`` with ``value`` (a new version of a job, or a retry notice)."""

    callback: Callable[[Any], object]
    value: object


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand ``value`` to the caller iterating over the steps (an event of ``watch``)."""

    value: object


Effect: TypeAlias = HttpCall | ReadStream | CloseStream | Sleep | Notify | Emit
Steps: TypeAlias = Generator[Effect, Any, T]
Outcome: TypeAlias = tuple[object, RequestFailure | None]


class Http(Protocol):
    """Blocking HTTP as the drivers need it."""

    def send(self, call: HttpCall) -> Answer: ...
    def read(self, stream: OpenStream) -> bytes: ...
    def close_stream(self, stream: OpenStream) -> None: ...


class AsyncHttp(Protocol):
    """Asynchronous HTTP as the drivers need it."""

    async def send(self, call: HttpCall) -> Answer: ...
    async def read(self, stream: OpenStream) -> bytes: ...
    async def close_stream(self, stream: OpenStream) -> None: ...
    async def aclose(self) -> None: ...


def run_steps(steps: Steps[T], http: Http, sleep: Callable[[float], None]) -> T:
    """Run ``steps`` to the end with blocking I/O and return their result."""
    events = iterate_steps(steps, http, sleep)
    try:
        next(events)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    events.close()
    raise TypeError("these steps emit values: iterate over them with iterate_steps")


def iterate_steps(steps: Steps[T], http: Http, sleep: Callable[[float], None]) -> Generator[Any, None, T]:
    """Run ``steps`` with blocking I/O, yielding the values they emit; return their result."""
    opened: list[OpenStream] = []
    with closing(steps):
        try:
            outcome: Outcome = (None, None)
            while True:
                try:
                    effect = _advance(steps, outcome)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                if type(effect) is Emit:
                    yield effect.value
                    outcome = (None, None)
                else:
                    outcome = _perform(effect, http, sleep, opened)
        finally:
            for stream in opened:
                http.close_stream(stream)


async def run_steps_async(steps: Steps[T], http: AsyncHttp, sleep: Callable[[float], Awaitable[None]]) -> T:
    """Run ``steps`` to the end with asynchronous I/O and return their result."""
    with closing(steps):
        outcome: Outcome = (None, None)
        send = http.send
        while True:
            try:
                effect = steps.throw(outcome[1]) if outcome[1] is not None else steps.send(outcome[0])
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if type(effect) is HttpCall:  # the hot path: one request
                try:
                    outcome = (await send(effect), None)
                except RequestFailure as failure:
                    outcome = (None, failure)
            else:
                outcome = await _perform_async(effect, http, sleep, [])


async def iterate_steps_async(
    steps: Steps[Any], http: AsyncHttp, sleep: Callable[[float], Awaitable[None]]
) -> AsyncGenerator[Any, None]:
    """Run ``steps`` with asynchronous I/O, yielding the values they emit."""
    opened: list[OpenStream] = []
    with closing(steps):
        try:
            outcome: Outcome = (None, None)
            while True:
                try:
                    effect = _advance(steps, outcome)
                except StopIteration:
                    return
                if type(effect) is Emit:
                    yield effect.value
                    outcome = (None, None)
                else:
                    outcome = await _perform_async(effect, http, sleep, opened)
        finally:
            for stream in opened:
                await http.close_stream(stream)


def _advance(steps: Steps[Any], outcome: Outcome) -> Effect:
    reply, error = outcome
    return steps.throw(error) if error is not None else steps.send(reply)


def _perform(effect: Effect, http: Http, sleep: Callable[[float], None], opened: list[OpenStream]) -> Outcome:
    try:
        if isinstance(effect, HttpCall):
            answer = http.send(effect)
            if effect.stream and _is_stream(answer):
                opened.append(answer)
            return answer, None
        if isinstance(effect, ReadStream):
            return http.read(effect.stream), None
    except RequestFailure as failure:
        return None, failure
    if isinstance(effect, CloseStream):
        _forget(opened, effect.stream)
        http.close_stream(effect.stream)
    elif isinstance(effect, Sleep):
        sleep(effect.seconds)
    elif isinstance(effect, Notify):
        effect.callback(effect.value)
    else:
        raise TypeError(f"unknown effect {effect!r}")
    return None, None


async def _perform_async(
    effect: Effect, http: AsyncHttp, sleep: Callable[[float], Awaitable[None]], opened: list[OpenStream]
) -> Outcome:
    try:
        if isinstance(effect, HttpCall):
            answer = await http.send(effect)
            if effect.stream and _is_stream(answer):
                opened.append(answer)
            return answer, None
        if isinstance(effect, ReadStream):
            return await http.read(effect.stream), None
    except RequestFailure as failure:
        return None, failure
    if isinstance(effect, CloseStream):
        _forget(opened, effect.stream)
        await http.close_stream(effect.stream)
    elif isinstance(effect, Sleep):
        await sleep(effect.seconds)
    elif isinstance(effect, Notify):
        returned = effect.callback(effect.value)
        if inspect.isawaitable(returned):
            await returned
    else:
        raise TypeError(f"unknown effect {effect!r}")
    return None, None


def is_event_stream(headers: Mapping[str, str]) -> bool:
    """Whether an answer's ``Content-Type`` is ``text/event-stream``."""
    kind = headers.get("content-type", "")
    return kind.split(";", 1)[0].strip().lower() == "text/event-stream"


def _is_stream(answer: Answer) -> bool:
    return answer.status_code == 200 and is_event_stream(answer.headers)


def _forget(opened: list[OpenStream], stream: OpenStream) -> None:
    for index, known in enumerate(opened):
        if known is stream:
            del opened[index]
            return


def chunks(iterator: Iterator[bytes]) -> bytes:
    """The next non-empty chunk of ``iterator``, or ``b""`` at its end."""
    for chunk in iterator:
        if chunk:
            return chunk
    return b""
