"""The client's view of a job: a typed, read-only value parsed from what the server sent.

The parser is lenient in what it accepts from Deploy-style servers (fields left out by
``fields=``, a partial job in a ``202``, timestamps of any precision) and keeps the dict it was
parsed from in :attr:`Job.raw`, so nothing the server said is lost. It reads at once only what
following a job needs (id, state, message, progress, ``last_modified`` as text, links); the
timestamps are read from :attr:`Job.raw` when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..model import JobError, JobState
from .errors import ProtocolError

__all__ = ["Job", "JobError", "JobState", "parse_error", "parse_time"]


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the server last described it.

    ``state`` is :attr:`JobState.QUEUED` when the server left it out (Deploy answers a ``202``
    with only the job's id and links); :attr:`is_complete` tells whether the job carried its
    ``state`` and ``last_modified``. Timestamps are timezone-aware UTC datetimes, or ``None``
    when absent or unreadable; :attr:`last_modified_text` is the exact text the server sent,
    which is what a long poll must echo. :attr:`owner` is the user who started the job, sent
    only to an administrator.
    """

    id: str
    state: JobState
    operation: str = ""
    message: str = ""
    progress: int | None = None
    last_modified_text: str | None = None
    result: Any = None
    error: JobError | None = None
    resource_href: str | None = None
    self_href: str | None = None
    owner: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def create_time(self) -> datetime | None:
        return parse_time(self.raw.get("create_time"))

    @property
    def start_time(self) -> datetime | None:
        return parse_time(self.raw.get("start_time"))

    @property
    def end_time(self) -> datetime | None:
        return parse_time(self.raw.get("end_time"))

    @property
    def last_modified(self) -> datetime | None:
        return parse_time(self.last_modified_text)

    @property
    def is_terminal(self) -> bool:
        """``True`` for ``success`` and ``failure``: the job will never change state again."""
        return self.state.is_terminal

    @property
    def is_complete(self) -> bool:
        """``True`` when the server sent the job's ``state`` and ``last_modified``."""
        return "state" in self.raw and self.last_modified_text is not None

    @property
    def visible(self) -> tuple[JobState, str, int | None]:
        """What a person watching the job sees: state, message and progress."""
        return (self.state, self.message, self.progress)

    def differs_from(self, other: Job) -> bool:
        """``True`` when this is a later version of ``other`` that someone watching would notice."""
        return self.last_modified_text != other.last_modified_text or self.visible != other.visible

    @classmethod
    def from_wire(cls, data: object, *, location: str | None = None) -> Job:
        """Parse a job dict as sent by the server; ``location`` is used when it has no self link.

        Raises :class:`ProtocolError` when ``data`` is not a job (no ``id``, unknown state).
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise ProtocolError(f"expected a job object with an id, got {_preview(data)}")
        modified = data.get("last_modified")
        return cls(
            id=data["id"],
            state=_state(data.get("state", JobState.QUEUED.value)),
            operation=_text(data.get("operation")),
            message=_text(data.get("message")),
            progress=_progress(data.get("progress")),
            last_modified_text=modified if isinstance(modified, str) else None,
            result=data.get("result"),
            error=parse_error(data.get("error")),
            resource_href=_href(data.get("resource")),
            self_href=_href(_link(data, "self")) or location,
            owner=data["owner"] if isinstance(data.get("owner"), str) else None,
            raw=data,
        )


_STATES = {state.value: state for state in JobState}


def _state(value: object) -> JobState:
    known = _STATES.get(value) if isinstance(value, str) else None
    if known is not None:
        return known
    try:
        return JobState(str(value).lower())
    except ValueError:
        raise ProtocolError(f"unknown job state {value!r}") from None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _progress(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def parse_time(value: object) -> datetime | None:
    """An aware UTC datetime from the server's text, read leniently: any precision (digits beyond
    microseconds dropped), ``Z``/``z`` or an offset; a time without either is taken as UTC."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().upper())
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_error(value: object) -> JobError | None:
    if not isinstance(value, Mapping):
        return None
    return JobError(code=_text(value.get("code")) or "error", message=_text(value.get("message")))


def _link(data: Mapping[str, Any], name: str) -> object:
    links = data.get("_links")
    return links.get(name) if isinstance(links, Mapping) else None


def _href(value: object) -> str | None:
    if isinstance(value, Mapping) and isinstance(value.get("href"), str):
        return str(value["href"])
    return None


def _preview(data: object) -> str:
    text = repr(data)
    return text if len(text) <= 120 else text[:117] + "..."
