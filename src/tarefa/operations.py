"""Operations: the named pieces of slow work that jobs run, and the context they run with."""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from .model import Job
from .values import check_json

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")


class OperationError(Exception):
    """Raise from an operation to end its job in ``failure`` with this error code and message.

    ``code`` is snake_case and meant for programs (``host_unreachable``); ``message`` for people.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.raise_if_cancelled` (and ``sleep``) once a cancel was asked."""


class JobContext:
    """What a running operation sees of its job: report progress, notice a cancel request.

    Async operations get this class; plain functions (run in a thread) get
    :class:`ThreadJobContext`, whose ``report`` and ``sleep`` are blocking calls.
    """

    def __init__(
        self,
        job: Job,
        reporter: Callable[[str | None, int | None], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.job = job
        self._reporter = reporter
        self._loop = loop
        self._cancelled = asyncio.Event()

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def cancel_requested(self) -> bool:
        """True once a client asked to cancel this job; stop soon and raise :class:`JobCancelled`."""
        return self._cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job.id} was cancelled")

    async def report(self, message: str | None = None, progress: int | None = None) -> None:
        """Publish a new status line and/or progress (0..100): a visible change of the job."""
        if progress is not None and not 0 <= progress <= 100:
            raise ValueError(f"progress must be between 0 and 100, not {progress}")
        await self._reporter(message, progress)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once and raise :class:`JobCancelled` if the job is cancelled."""
        try:
            await asyncio.wait_for(self._cancelled.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return
        self.raise_if_cancelled()

    def _request_cancel(self) -> None:
        self._cancelled.set()


class ThreadJobContext(JobContext):
    """The context of an operation written as a plain function (it runs in a worker thread)."""

    def report(self, message: str | None = None, progress: int | None = None) -> None:  # type: ignore[override]
        """Publish a new status line and/or progress; blocks until it is stored."""
        self._call(super().report(message, progress))

    def sleep(self, seconds: float) -> None:  # type: ignore[override]
        """Sleep in the thread; returns early and raises :class:`JobCancelled` on cancel."""
        self._call(super().sleep(seconds))

    def _call(self, coroutine: typing.Coroutine[Any, Any, None]) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.result()


@dataclass(frozen=True)
class Operation:
    """A registered operation: its function, its input type and its retry policy."""

    name: str
    function: Callable[..., Any]
    input_type: Any
    takes_input: bool
    max_attempts: int = 1

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    def arguments(self, context: JobContext, data: Any) -> tuple[Any, ...]:
        """The call's arguments: the context, then the input rebuilt from the job's JSON."""
        return (context, self.parse_input(data)) if self.takes_input else (context,)

    def parse_input(self, data: Any) -> Any:
        """Rebuild the operation's input from the job's stored JSON."""
        if self.input_type is None:
            return data
        return _adapter(self.input_type).validate_python(data)


@functools.lru_cache(maxsize=256)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    """Building a TypeAdapter compiles a schema: do it once per type, not once per job."""
    return TypeAdapter(annotation)


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def dump_input(value: Any) -> Any:
    """An operation's input as JSON-compatible data, to store with the job.

    Raises :class:`~tarefa.values.UnstorableValue` (naming the part) for what no store can keep:
    NaN and infinities are refused before the JSON dump would turn them into ``null``.
    """
    if value is None or isinstance(value, str | int | float | bool):
        check_json(value)
        return value
    check_json(value.model_dump(mode="python") if isinstance(value, BaseModel) else value)
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else _ANY.dump_python(value, mode="json")
    check_json(data)
    return data


def _input_signature(function: Callable[..., Any]) -> tuple[bool, Any]:
    """Whether the function takes an input after the context, and the input's annotated type."""
    parameters = list(inspect.signature(function).parameters.values())
    if len(parameters) < 2:
        return False, None
    return True, typing.get_type_hints(function).get(parameters[1].name)


class OperationRegistry:
    """The operations an application declares, by name."""

    def __init__(self) -> None:
        self._operations: dict[str, Operation] = {}

    def add(self, name: str, function: Callable[..., Any], *, retry_safe: bool, max_attempts: int) -> Operation:
        if not name or set(name) - _NAME_CHARS:
            raise ValueError(f"operation name {name!r}: use lowercase letters, digits, '.', '_' and '-'")
        if name in self._operations:
            raise ValueError(f"operation {name!r} is already registered")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        takes_input, input_type = _input_signature(function)
        operation = Operation(name, function, input_type, takes_input, max_attempts if retry_safe else 1)
        self._operations[name] = operation
        return operation

    def get(self, name: str) -> Operation | None:
        return self._operations.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._operations

    def __iter__(self) -> Iterator[str]:
        return iter(self._operations)

    def __len__(self) -> int:
        return len(self._operations)


__all__ = [
    "JobCancelled",
    "JobContext",
    "Operation",
    "OperationError",
    "OperationRegistry",
    "ThreadJobContext",
    "dump_input",
]
