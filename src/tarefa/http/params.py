"""Parsing of what a request carries besides its body: query parameters and headers (SPEC §2, §3).

Strict on purpose: integers and timestamps are plain ASCII digits, a cursor is only one this server
could have written, and every refusal is a ``400 invalid_parameter`` with a short message (never
an echo of a huge input). Nothing here may raise anything but :class:`ApiError`.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import Query
from pydantic import AfterValidator, BeforeValidator
from starlette.requests import Request
from starlette.types import Scope

from ..model import JobState, from_microseconds, parse_timestamp, to_microseconds
from .errors import ApiError
from .wire import JOB_FIELDS

MAX_ECHO = 60  # characters of a bad value quoted back in an error message
MAX_CURSOR = 200
_SPACE_FOR_PLUS = re.compile(r"(\d{2}:\d{2}:\d{2}(?:\.\d+)?) (\d{2}:?\d{2})$", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,9}", re.ASCII)
_CURSOR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_MIN_MICROS, _MAX_MICROS = (to_microseconds(limit.replace(tzinfo=UTC)) for limit in (datetime.min, datetime.max))
IDEMPOTENCY_KEY = "Idempotency-Key"
#: The documented form (printable ASCII); any printable UTF-8 text is taken too.
IDEMPOTENCY_KEY_FORM = r"^[!-~]([ -~]{0,253}[!-~])?$"


def query_pairs(scope: Scope) -> list[tuple[str, str]]:
    """The query's ``(name, value)`` pairs, decoded as Starlette decodes ``request.query_params``
    (``parse_qsl`` of the latin-1 text, blank values kept), parsed once per request (kept in the
    scope with the bytes they came from: a layer that gives the scope another query is parsed
    again). A query with no ``%`` or ``+`` (nearly every one) is split directly, to the same pairs."""
    raw: bytes = scope.get("query_string", b"")
    cached: tuple[bytes, list[tuple[str, str]]] | None = scope.get("tarefa.query")
    if cached is not None and cached[0] is raw:
        return cached[1]
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        pairs = parse_qsl(text, keep_blank_values=True)
    else:
        pairs = [(name, value) for name, _, value in (field.partition("=") for field in text.split("&") if field)]
    scope["tarefa.query"] = (raw, pairs)
    return pairs


def ascii_integer(value: Any) -> Any:
    """A query integer as plain ASCII digits only: no sign, point, space or other script's digits."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("use an integer written in plain ASCII digits, such as 30")
    return value


#: After ``Query(...)`` in an ``Annotated`` integer parameter: plain ASCII digits only (``5.0``, ``+3``,
#: ``3 `` and ``٣`` are refused), the Query's bounds still documented.
ASCII_DIGITS = BeforeValidator(ascii_integer)

#: PATCH ``action``: documented as the one value it takes.
CancelAction = Annotated[Literal["cancel"], Query(description="cancel")]

# -- the query parameters of the job routes: each documented form is the one the parser takes ----

_STATE = "|".join(state.value for state in JobState)
_FIELD = "|".join(re.escape(name) for name in JOB_FIELDS)
STATES_FORM = re.compile(rf"^({_STATE})(\|({_STATE}))*$", re.ASCII)
ORDER_FORM = re.compile(r"^(create_time|last_modified)( (asc|desc))?$", re.ASCII)
FIELDS_FORM = re.compile(rf"^(\*\*?|({_FIELD})(,({_FIELD}))*)$", re.ASCII)
CURSOR_FORM = re.compile(rf"^[A-Za-z0-9_-]{{0,{MAX_CURSOR}}}$", re.ASCII)  # empty: the first page
OPERATION_FORM = r"^[a-z0-9._-]{1,200}$"


def _documented(form: re.Pattern[str]) -> dict[str, Any]:
    return {"pattern": form.pattern}


PollTimeout = Annotated[
    int | None,
    Query(ge=1, le=120, description="Long poll: answer when the job changes, or after this many seconds"),
    ASCII_DIGITS,
]


def _checked_baseline(text: str | None) -> str | None:
    """Refuse a malformed ``last_modified`` even where it has no effect (no ``poll_timeout``)."""
    try:
        parse_baseline(text)
    except ApiError as exc:
        raise ValueError(exc.message) from None
    return text


LastModified = Annotated[
    str | None,
    Query(
        description="Long poll baseline (RFC 3339, optionally prefixed by > or >=): answer when the job's "
        "last_modified is later. Default: the job's last_modified when the request arrives.",
        json_schema_extra={"format": "date-time"},
    ),
    AfterValidator(_checked_baseline),
]
Fields = Annotated[
    str | None,
    Query(description="Comma-separated Job fields to return (* for all)", json_schema_extra=_documented(FIELDS_FORM)),
]
StateFilter = Annotated[
    str | None,
    Query(description="queued, running, success, failure; or a|b", json_schema_extra=_documented(STATES_FORM)),
]
OperationFilter = Annotated[str | None, Query(description="an operation name", pattern=OPERATION_FORM)]
MaxRecords = Annotated[int, Query(ge=1, le=1000), ASCII_DIGITS]
_SEQ = re.compile(r"[0-9]{1,19}", re.ASCII)


def ascii_seq(value: Any) -> Any:
    """An event ``seq`` as plain ASCII digits (up to 19: a 64-bit integer)."""
    if isinstance(value, str) and not _SEQ.fullmatch(value):
        raise ValueError("use the seq of an event, in plain ASCII digits, such as 42")
    return value


After = Annotated[
    int, Query(ge=0, le=2**63 - 1, description="Only the events with a later seq"), BeforeValidator(ascii_seq)
]
OrderBy = Annotated[
    str,
    Query(description="create_time or last_modified, then asc or desc", json_schema_extra=_documented(ORDER_FORM)),
]
Cursor = Annotated[
    str | None, Query(description="From _links.next; opaque", json_schema_extra=_documented(CURSOR_FORM))
]


def echo(value: str) -> str:
    """``value`` quoted for an error message, cut to a readable length."""
    if len(value) <= MAX_ECHO:
        return repr(value)
    return f"{value[:MAX_ECHO]!r}... ({len(value)} characters)"


def invalid(target: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", message, target=target)


def parse_baseline(text: str | None) -> datetime | None:
    """``last_modified`` with Deploy's optional ``>``/``>=`` prefix; a ``+`` decoded as space is mended."""
    if text is None:
        return None
    value = text.strip().removeprefix(">=").removeprefix(">").strip()
    value = _SPACE_FOR_PLUS.sub(r"\1+\2", value)
    try:
        return parse_timestamp(value)
    except ValueError:
        raise invalid(
            "last_modified",
            f"last_modified {echo(text)}: use an RFC 3339 timestamp such as 2026-11-28T14:00:00.123456Z "
            "(ASCII digits, Z or an offset within ±23:59), optionally prefixed by > or >=",
        ) from None


def parse_states(text: str | None) -> frozenset[JobState]:
    """``state=queued|running`` → the states; absent → none (all)."""
    if text is None:
        return frozenset()
    if not STATES_FORM.fullmatch(text):
        raise invalid(
            "state",
            f"state {echo(text)}: use queued, running, success or failure, or several joined by | (queued|running)",
        )
    return frozenset(JobState(part) for part in text.split("|"))


def parse_order(text: str) -> tuple[str, bool]:
    """``order_by=create_time desc`` → (field, descending); no direction is ascending."""
    if not ORDER_FORM.fullmatch(text):
        raise invalid("order_by", f"order_by {echo(text)}: use create_time or last_modified, then asc or desc")
    field, _, direction = text.partition(" ")
    return field, direction == "desc"


def parse_fields(text: str | None) -> frozenset[str] | None:
    """``fields=a,b`` → the set; ``*``/``**``/absent → None (all). Unknown names → 400."""
    if text is None or text in ("*", "**"):
        return None
    if not FIELDS_FORM.fullmatch(text):
        names = text.split(",")
        unknown = [name for name in names if name not in JOB_FIELDS]
        shown = ", ".join(echo(name) for name in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise invalid(
            "fields", f"fields {shown}{more}: name Job fields joined by commas ({', '.join(JOB_FIELDS)}), or *"
        )
    return frozenset(text.split(","))


def encode_cursor(moment: datetime, job_id: str) -> str:
    raw = orjson.dumps([to_microseconds(moment), job_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str]:
    """The position a cursor of :func:`encode_cursor` names; anything else is a 400."""
    try:
        if not CURSOR_FORM.fullmatch(text):
            raise ValueError("not in the form of a cursor")
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        return _cursor_position(orjson.loads(raw))
    except (ValueError, TypeError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        raise invalid("cursor", "cursor is not one this server gave: follow _links.next as it is") from None


def _cursor_position(value: Any) -> tuple[datetime, str]:
    match value:
        case [int() as micros, str() as job_id] if (
            not isinstance(micros, bool) and _MIN_MICROS <= micros <= _MAX_MICROS and _CURSOR_ID.fullmatch(job_id)
        ):
            return from_microseconds(micros), job_id
    raise ValueError("not a cursor")


def idempotency_key_from(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, decoded as UTF-8 from its raw bytes: 1..255 printable characters,
    sent once. Absent → None."""
    raw: list[bytes] = [value for name, value in request.scope["headers"] if name.lower() == b"idempotency-key"]
    if not raw:
        return None
    if len(raw) > 1:
        raise invalid(IDEMPOTENCY_KEY, "send one Idempotency-Key header, not several")
    try:
        key = raw[0].decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(IDEMPOTENCY_KEY, "Idempotency-Key must be UTF-8 text") from None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise invalid(IDEMPOTENCY_KEY, "Idempotency-Key must be 1 to 255 printable characters")
    return key
