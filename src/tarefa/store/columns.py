"""A job's columns, derived from :data:`tarefa.model.FIELDS`: every backend's SQL lists, row
encoding and decoding come from here, so a new Job field needs no hand-written column list.

Each field is one column of the same name, but ``error``, which is two (``error_code`` and
``error_message``). A backend says how it writes each *kind* of value (:class:`Codec`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..model import FIELDS, FieldInfo, Job, JobError, JobState
from .base import StoreError

Encode = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the jobs table, and the Job field it holds."""

    name: str
    field: FieldInfo


def _columns_of(field: FieldInfo) -> tuple[Column, ...]:
    if field.kind == "error":
        return (Column("error_code", field), Column("error_message", field))
    return (Column(field.name, field),)


#: Every column of a job, in order.
COLUMNS: tuple[Column, ...] = tuple(column for field in FIELDS for column in _columns_of(field))
#: The columns a change may write (the others are fixed when the job is created).
MUTABLE_COLUMNS: tuple[Column, ...] = tuple(column for column in COLUMNS if column.field.mutable)
NAMES = tuple(column.name for column in COLUMNS)
MUTABLE_NAMES = tuple(column.name for column in MUTABLE_COLUMNS)


def json_bytes(value: Any) -> bytes:
    """A JSON value as stored; a value that is not JSON is the store's own error."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise StoreError(f"a job value cannot be stored as JSON: {exc}") from None


def json_text(value: Any) -> str:
    return json_bytes(value).decode()


def _identity(value: Any) -> Any:
    return value


_STATES = {state.value: state for state in JobState}
_MAX_PLANS = 8


def _getter(name: str, encode: Encode | None) -> Encode:
    """The stored value of field ``name`` of a job (None stays None)."""
    if encode is None:
        return lambda job: getattr(job, name)
    return lambda job: None if (value := getattr(job, name)) is None else encode(value)


def _error_part(part: str) -> Encode:
    return lambda job: None if job.error is None else getattr(job.error, part)


def _reader(index: int, decode: Encode | None) -> Encode:
    """Field value from column ``index`` of a row (None stays None)."""
    if decode is None:
        return lambda row: row[index]
    return lambda row: None if (value := row[index]) is None else decode(value)


def _state_reader(index: int) -> Encode:
    return lambda row: _STATES[row[index]]


def _error_reader(index: int) -> Encode:
    return lambda row: None if row[index] is None else JobError(row[index], row[index + 1] or "")


@dataclass(frozen=True, slots=True)
class Codec:
    """How one backend writes and reads each kind of value (identity where not given). The
    per-column functions are built once, on first use: a job's row costs one call per column."""

    encoders: Mapping[str, Encode]
    decoders: Mapping[str, Encode]
    _plans: dict[int, tuple[Sequence[Column], tuple[Encode, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _fields: list[tuple[Encode, ...]] = field(default_factory=list, compare=False, repr=False)

    def encode(self, job: Job, columns: Sequence[Column] = COLUMNS) -> list[Any]:
        """The job's values for ``columns``, in order."""
        known = self._plans.get(id(columns))  # by identity: the column lists are module constants
        if known is None or known[0] is not columns:
            known = (columns, tuple(self._encoder(column) for column in columns))
            if len(self._plans) < _MAX_PLANS:  # another list each call would be worked out each call
                self._plans[id(columns)] = known
        return [encode(job) for encode in known[1]]

    def _encoder(self, column: Column) -> Encode:
        kind = column.field.kind
        if kind == "error":
            return _error_part("code" if column.name == "error_code" else "message")
        if kind == "state":
            return lambda job: job.state.value
        return _getter(column.field.name, self.encoders.get(kind))

    def decode(self, values: Sequence[Any]) -> Job:
        """A job from the values of :data:`COLUMNS`, in order."""
        if len(values) != len(COLUMNS):
            raise ValueError(f"a job row has {len(COLUMNS)} columns, not {len(values)}")
        if not self._fields:
            self._fields.append(self._decoders())
        return Job(*[read(values) for read in self._fields[0]])

    def _decoders(self) -> tuple[Encode, ...]:
        """One function per Job field, in the order of its constructor's arguments."""
        readers: list[Encode] = []
        for index, column in enumerate(COLUMNS):
            kind = column.field.kind
            if kind == "error":
                if column.name == "error_code":
                    readers.append(_error_reader(index))
            elif kind == "state":
                readers.append(_state_reader(index))
            else:
                readers.append(_reader(index, self.decoders.get(kind)))
        assert len(readers) == len(FIELDS)
        return tuple(readers)

    def decode_named(self, row: Mapping[str, Any]) -> Job:
        """A job from a row of named columns."""
        return self.decode([row[name] for name in NAMES])
