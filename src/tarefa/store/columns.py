"""A job's columns, derived from :data:`tarefa.model.FIELDS`: every backend's SQL lists, row
encoding and decoding come from here, so a new Job field needs no hand-written column list.

Each field is one column of the same name, but ``error``, which is two (``error_code`` and
``error_message``). A backend says how it writes each *kind* of value (:class:`Codec`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Codec:
    """How one backend writes and reads each kind of value (identity where not given)."""

    encoders: Mapping[str, Encode]
    decoders: Mapping[str, Encode]

    def encode(self, job: Job, columns: Sequence[Column] = COLUMNS) -> list[Any]:
        """The job's values for ``columns``, in order."""
        return [self._encode(job, column) for column in columns]

    def _encode(self, job: Job, column: Column) -> Any:
        value = getattr(job, column.field.name)
        if column.field.kind == "error":
            return None if value is None else (value.code if column.name == "error_code" else value.message)
        if value is None:
            return None
        if column.field.kind == "state":
            return value.value
        return self.encoders.get(column.field.kind, _identity)(value)

    def decode(self, values: Sequence[Any]) -> Job:
        """A job from the values of :data:`COLUMNS`, in order."""
        fields: dict[str, Any] = {}
        for column, value in zip(COLUMNS, values, strict=True):
            kind = column.field.kind
            if kind == "error":
                if column.name == "error_code":
                    fields["error"] = None if value is None else JobError(value, "")
                elif fields["error"] is not None:
                    fields["error"] = JobError(fields["error"].code, value or "")
            elif kind == "state":
                fields[column.name] = JobState(value)
            else:
                fields[column.name] = None if value is None else self.decoders.get(kind, _identity)(value)
        return Job(**fields)

    def decode_named(self, row: Mapping[str, Any]) -> Job:
        """A job from a row of named columns."""
        return self.decode([row[name] for name in NAMES])
