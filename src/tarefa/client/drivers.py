"""Effects and the two drivers that perform them.

The client's logic (:mod:`tarefa.client.core`) is written once, as generators that *yield*
effects instead of doing I/O: "send this HTTP request", "sleep this long", "tell the caller about
this job". A driver runs such a generator to the end, performing each effect and sending the
outcome back in. :func:`run_steps` performs them with an :class:`httpx.Client` and
:func:`time.sleep`; :func:`run_steps_async` with an :class:`httpx.AsyncClient` and
:func:`anyio.sleep`. Request errors (:class:`httpx.RequestError`) are thrown back into the generator,
which decides whether to retry; nothing else is.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import httpx

from .job import Job

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpCall:
    """Send one HTTP request; the outcome is the :class:`httpx.Response` (body read) or the
    :class:`httpx.RequestError` thrown into the steps."""

    method: str
    url: str
    timeout: httpx.Timeout
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None


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


Effect: TypeAlias = HttpCall | Sleep | Notify
Steps: TypeAlias = Generator[Effect, Any, T]
Outcome: TypeAlias = tuple[object, httpx.RequestError | None]


def run_steps(steps: Steps[T], http: httpx.Client, sleep: Callable[[float], None]) -> T:
    """Run ``steps`` to the end with blocking I/O and return their result."""
    with closing(steps):
        outcome: Outcome = (None, None)
        while True:
            try:
                effect = _advance(steps, outcome)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            outcome = _perform(effect, http, sleep)


async def run_steps_async(steps: Steps[T], http: httpx.AsyncClient, sleep: Callable[[float], Awaitable[None]]) -> T:
    """Run ``steps`` to the end with asynchronous I/O and return their result."""
    with closing(steps):
        outcome: Outcome = (None, None)
        while True:
            try:
                effect = _advance(steps, outcome)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            outcome = await _perform_async(effect, http, sleep)


def _advance(steps: Steps[Any], outcome: Outcome) -> Effect:
    reply, error = outcome
    return steps.throw(error) if error is not None else steps.send(reply)


def _perform(effect: Effect, http: httpx.Client, sleep: Callable[[float], None]) -> Outcome:
    if isinstance(effect, HttpCall):
        try:
            return http.send(_build(http, effect)), None
        except httpx.RequestError as exc:
            return None, exc
    if isinstance(effect, Sleep):
        sleep(effect.seconds)
    else:
        effect.callback(effect.value)
    return None, None


async def _perform_async(effect: Effect, http: httpx.AsyncClient, sleep: Callable[[float], Awaitable[None]]) -> Outcome:
    if isinstance(effect, HttpCall):
        try:
            return await http.send(_build(http, effect)), None
        except httpx.RequestError as exc:
            return None, exc
    if isinstance(effect, Sleep):
        await sleep(effect.seconds)
    else:
        returned = effect.callback(effect.value)
        if inspect.isawaitable(returned):
            await returned
    return None, None


def _build(http: httpx.Client | httpx.AsyncClient, call: HttpCall) -> httpx.Request:
    return http.build_request(
        call.method,
        call.url,
        headers=list(call.headers),
        content=call.content,
        timeout=call.timeout,
    )
