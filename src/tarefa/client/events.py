"""Job events as the client sees them, and the server-sent events wire format, both pure.

:class:`SseParser` reads a ``text/event-stream`` body chunk by chunk as the HTML standard says
(lines ending in CRLF, LF or CR, even split across chunks; ``data`` lines joined; ``id``; comment
lines ignored; a message dispatched at each blank line). :class:`JobEvent` is one event of SPEC
§10 read from a message's data, or made from a job's new version when a server has no streams.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ..model import JobError, JobState
from .errors import ProtocolError
from .job import Job, parse_error, parse_time


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One dispatched server-sent event: its ``event`` type, ``data`` and ``id`` (the last one
    seen on the stream, as the standard says, or ``None``)."""

    event: str
    data: str
    id: str | None


class SseParser:
    """An incremental ``text/event-stream`` parser: :meth:`feed` bytes, get complete messages."""

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self.retry: int | None = None
        """The last ``retry:`` the server sent (milliseconds), or ``None``."""

    def feed(self, chunk: bytes) -> list[SseMessage]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk
        messages: list[SseMessage] = []
        start = 0
        while True:
            cr, lf = buffer.find(b"\r", start), buffer.find(b"\n", start)
            end = min(cr, lf) if cr >= 0 and lf >= 0 else max(cr, lf)
            if end < 0:
                break
            message = self._line(buffer[start:end].decode("utf-8", errors="replace"))
            if message is not None:
                messages.append(message)
            if buffer[end : end + 1] == b"\r":
                if end + 1 == len(buffer):
                    self._skip_lf = True  # a CRLF may be split across chunks
                elif buffer[end + 1 : end + 2] == b"\n":
                    end += 1
            start = end + 1
        self._buffer = buffer[start:]
        return messages

    def _line(self, line: str) -> SseMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SseMessage | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseMessage(event or "message", "\n".join(data), self._last_id)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A visible change of a job (SPEC §10): ``seq`` (its place in the store's history; ``None``
    for an event made from a long poll against a server without streams), ``job_id``, ``time``
    (the job's ``last_modified`` after the change; ``time_text`` as sent), ``state``,
    ``message``, ``progress``, and ``error`` on failure. :attr:`raw` is the data as sent."""

    seq: int | None
    job_id: str
    time: datetime | None
    state: JobState
    message: str = ""
    progress: int | None = None
    error: JobError | None = None
    time_text: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """``True`` for the event that ends the job (``success`` or ``failure``)."""
        return self.state.is_terminal

    @classmethod
    def from_wire(cls, data: object) -> JobEvent:
        """An event from its JSON object; :class:`ProtocolError` if it is not one."""
        if not isinstance(data, Mapping) or not isinstance(data.get("job_id"), str):
            raise ProtocolError(f"expected an event with a job_id, got {str(data)[:120]}")
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            raise ProtocolError(f"an event's seq must be a positive integer, got {seq!r}")
        try:
            state = JobState(str(data.get("state")))
        except ValueError:
            raise ProtocolError(f"unknown job state {data.get('state')!r} in an event") from None
        when = data.get("time")
        progress = data.get("progress")
        return cls(
            seq=seq,
            job_id=data["job_id"],
            time=parse_time(when),
            state=state,
            message=data["message"] if isinstance(data.get("message"), str) else "",
            progress=progress if isinstance(progress, int) and not isinstance(progress, bool) else None,
            error=parse_error(data.get("error")),
            time_text=when if isinstance(when, str) else None,
            raw=data,
        )

    @classmethod
    def from_message(cls, message: SseMessage) -> JobEvent:
        try:
            data = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            raise ProtocolError(f"an event's data is not JSON: {message.data[:120]!r}") from None
        return cls.from_wire(data)

    @classmethod
    def from_job(cls, job: Job) -> JobEvent:
        """The event a watcher without a stream sees: the job's latest version (no ``seq``)."""
        return cls(
            seq=None,
            job_id=job.id,
            time=job.last_modified,
            state=job.state,
            message=job.message,
            progress=job.progress,
            error=job.error,
            time_text=job.last_modified_text,
            raw={},
        )
