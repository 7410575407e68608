"""Change announcements of the PostgreSQL store: the notification payloads and the ``LISTEN`` connection.

Every changing transaction of :class:`~tarefa.store.postgres.PostgresStore` sends the payloads of
:func:`encode_changes` with ``pg_notify``; each store's :class:`ChangeFeed` hears them on its own
``LISTEN`` connection, skips its own echoes, and hands the other processes' changes to the store's
listeners. When that connection is lost, the feed reconnects by itself and replays what it may have
missed (see the module doc of :mod:`tarefa.store.postgres`).

A payload also names the ``(owner, Idempotency-Key)`` of each keyed job it announces inserted
(``"k"``), for the other processes' filters of keys seen (:mod:`~tarefa.store.seen_keys`). A payload
without ``"k"`` comes from an older tarefa, which does not name its keys; ``"k": null`` says that a
pair was too long to name (over :data:`MAX_NAMED` bytes): either turns those filters off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from ..backoff import Backoff
from ..model import FIELDS, Job, JobError, JobState, event_of, utcnow
from . import postgres_sql as q
from .base import JobChange, StoreError

logger = logging.getLogger("tarefa.store.postgres")

#: Largest notification payload sent, in bytes (PostgreSQL refuses 8000 and more).
NOTIFY_LIMIT = 7000
#: Longest ``(owner, key)`` pair named in a payload, in bytes of JSON (longer ones turn filters off).
MAX_NAMED = 1000
#: Longest wait between two attempts to reconnect the ``LISTEN`` connection, in seconds.
MAX_RECONNECT_DELAY = 5.0
#: The Job fields that hold instants (RFC 3339 strings in payloads).
TIME_FIELDS = tuple(field.name for field in FIELDS if field.kind == "time")
#: The names of the Job fields, in order.
JOB_FIELDS = tuple(field.name for field in FIELDS)

Connection = psycopg.AsyncConnection[Any]
ReadChanges = Callable[[Sequence[str]], Awaitable[list[JobChange]]]
ChangesSince = Callable[[datetime], Awaitable[list[JobChange]]]
Emit = Callable[[Sequence[JobChange]], None]
#: Given the ``(owner, key)`` pairs a payload of another process names; None if it cannot name them.
LearnKeys = Callable[[Sequence[tuple[str, str]] | None], None]


class ChangeFeed:
    """The ``LISTEN`` connection of one store: hears other processes' changes, reconnects by itself.

    ``origin`` is the store's own mark in payloads (its echoes are skipped); ``read`` reads jobs too
    large for a notification, ``changes_since`` what changed since an instant (the catch-up after a
    reconnection), ``emit`` hands changes to the store's listeners, and ``learn_keys`` the keys
    that other processes' inserts name, before their changes are emitted.
    """

    def __init__(
        self,
        conninfo: str,
        origin: str,
        *,
        read: ReadChanges,
        changes_since: ChangesSince,
        emit: Emit,
        learn_keys: LearnKeys,
        reconnect_delay: float,
        heartbeat: float,
        margin: timedelta,
    ) -> None:
        self.listening = asyncio.Event()
        self.reconnects = 0
        self._conninfo = conninfo
        self._origin = origin
        self._own_head = own_head(origin)
        self._read = read
        self._changes_since = changes_since
        self._emit = emit
        self._learn_keys = learn_keys
        self._reconnect_delay = reconnect_delay
        self._heartbeat = heartbeat
        self._margin = margin
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected_at = utcnow()  # the last instant we know the connection was listening
        self._heard_at = time.monotonic()  # the same on the monotonic clock (heard_within)

    @property
    def backend_pid(self) -> int | None:
        conn = self._conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    def heard_within(self, seconds: float) -> bool:
        """Whether the connection is listening and was heard (a notification, our own echoes too,
        or a heartbeat) in the last ``seconds``: then every change whose notification was
        delivered before that has been handed on (a backlog of notifications waiting to be read
        is not counted: they are read one after the other, at once)."""
        return self.listening.is_set() and time.monotonic() - self._heard_at <= seconds

    async def start(self) -> None:
        """Connect and ``LISTEN`` (psycopg errors propagate), then listen in a background task."""
        self._conn = await self._connect()
        self._connected_at, self._heard_at = utcnow(), time.monotonic()
        self.listening.set()
        self._task = asyncio.create_task(self._run(), name="tarefa-postgres-listen")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await close_quietly(self._conn)
        self._conn = None
        self.listening.clear()

    async def _connect(self) -> Connection:
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await conn.execute(q.LISTEN)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self) -> None:
        while True:
            try:
                await self._receive()
            except Exception as exc:
                logger.warning("lost the PostgreSQL LISTEN connection (%s); reconnecting", exc)
            self.listening.clear()
            await close_quietly(self._conn)
            self._conn = None
            self._conn = await self._reconnect()

    async def _receive(self) -> None:
        """Hand notifications to the listeners until the connection fails; heartbeat when idle."""
        conn = self._conn
        assert conn is not None
        while True:
            async for notify in conn.notifies(timeout=self._heartbeat):
                heard_at, heard_now = utcnow(), time.monotonic()
                await self._dispatch(notify.payload)
                self._connected_at, self._heard_at = heard_at, heard_now
            beat_at, beat_now = utcnow(), time.monotonic()
            await asyncio.wait_for(conn.execute(q.HEARTBEAT), self._heartbeat)
            self._connected_at, self._heard_at = beat_at, beat_now

    async def _dispatch(self, payload: str) -> None:
        if payload.startswith(self._own_head):  # our own change, known without parsing it
            return
        try:
            origin, entries, keys = decode_changes(payload)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed notification on %s: %.200s", q.CHANNEL, payload)
            return
        if origin == self._origin:  # our own change: the writer already told our listeners
            return
        self._learn_keys(keys)
        to_read = [entry for entry in entries if isinstance(entry, str)]
        read = {change.job_id: change for change in await self._read(to_read)} if to_read else {}
        self._emit([read[entry] if isinstance(entry, str) else entry for entry in entries])

    async def _reconnect(self) -> Connection:
        """Connect again (with a growing delay), then emit what changed while we were away."""
        backoff = Backoff(first=self._reconnect_delay, cap=MAX_RECONNECT_DELAY, jitter=0.25)
        attempt = 0
        while True:
            await asyncio.sleep(backoff.delay(attempt, random.random))
            attempt += 1
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError) as exc:
                logger.warning("cannot reconnect the LISTEN connection yet: %s", exc)
                continue
            listening_since, heard_before = utcnow(), time.monotonic()  # before the catch-up's read
            try:
                missed = await self._changes_since(self._connected_at - self._margin)
            except StoreError as exc:
                logger.warning("cannot catch up on missed job changes yet: %s", exc)
                await close_quietly(conn)
                continue
            except BaseException:  # stopped while catching up: the new connection is not kept
                await close_quietly(conn)
                raise
            self._connected_at, self._heard_at = listening_since, heard_before
            self.reconnects += 1
            self.listening.set()
            logger.info("the LISTEN connection is back; replaying %d job change(s) it may have missed", len(missed))
            self._emit(missed)
            return conn


async def close_quietly(conn: Connection | None) -> None:
    """Close a connection that may be broken already, ignoring any error."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()


# -- notification payloads ----------------------------------------------------------------------------


def encode_changes(origin: str, changes: Sequence[JobChange]) -> list[str]:
    """Pack the changes into notification payloads under :data:`NOTIFY_LIMIT` bytes each.

    Entries: ``["j", job, seq]`` a changed job and the ``seq`` of its event, ``["r", id]`` a
    changed job too large to send (the listener reads it), ``["d", id]`` a deleted job. Each
    payload names the keys of the inserts it announces (module doc).
    """
    tail = b"]}"
    fixed = len(_payload_head(origin, [])) + len(tail)
    payloads: list[str] = []
    batch: list[bytes] = []
    keys: list[list[str]] | None = []
    size = 0
    for change in changes:
        pair = _key_of(change)
        named = len(orjson.dumps(pair)) + 1 if pair else 0
        unnamed = named > MAX_NAMED  # not named: the payload says so ("k": null)
        if unnamed:
            named = 0
        entry = _encode_entry(change, NOTIFY_LIMIT - 100 - named)
        more = len(entry) + 1 + named
        if batch and fixed + size + more > NOTIFY_LIMIT:
            payloads.append((_payload_head(origin, keys) + b",".join(batch) + tail).decode())
            batch, keys, size = [], [], 0
        batch.append(entry)
        if unnamed:
            keys = None
        elif pair and keys is not None:
            keys.append(pair)
        size += more
    if batch:
        payloads.append((_payload_head(origin, keys) + b",".join(batch) + tail).decode())
    return payloads


def announcement(origin: str, job: Job, key: str | None = None) -> dict[str, str] | None:
    """The payload announcing one changed job, as :func:`encode_changes` writes it, in two parts
    around the ``seq`` of its event, for a statement that numbers the event and notifies at once
    (parameters ``announce_before`` and ``announce_after``); None if the job is too large. ``key``:
    the job's Idempotency-Key, for an insert."""
    wire = orjson.dumps(_job_to_wire(job), option=orjson.OPT_UTC_Z)
    keys = [[str(job.owner), key]] if key is not None else []
    named = len(orjson.dumps(keys[0])) + 1 if keys else 0
    # as encode_changes: '["j",' wire ',' seq (up to 19 digits) ']'; else the batch's encoding
    if named > MAX_NAMED or len(wire) + 26 > NOTIFY_LIMIT - 100 - named:
        return None
    return {"announce_before": (_payload_head(origin, keys) + b'["j",' + wire + b",").decode(), "announce_after": "]]}"}


def announcement_head(origin: str) -> str:
    """The start of a payload of ``origin`` that names no key, up to its first entry."""
    return _payload_head(origin, []).decode()


def own_head(origin: str) -> str:
    """The start of every payload of ``origin`` (its echoes are known by it)."""
    return f'{{"o":"{origin}","k":'


def _payload_head(origin: str, keys: list[list[str]] | None) -> bytes:
    return b'{"o":"%s","k":%s,"c":[' % (origin.encode(), orjson.dumps(keys))


def decode_changes(payload: str) -> tuple[str, list[JobChange | str], list[tuple[str, str]] | None]:
    """The origin, the entries of a payload (an id, str, stands for a job to read) and the
    ``(owner, key)`` pairs it names (None: it cannot name them all; module doc)."""
    data = orjson.loads(payload)
    keys = data.get("k")
    pairs = None if keys is None else [(str(owner), str(key)) for owner, key in keys]
    return str(data["o"]), [_decoded_entry(*entry) for entry in data["c"]], pairs


def _key_of(change: JobChange) -> list[str] | None:
    return [str(change.job.owner), change.key] if change.key is not None and change.job is not None else None


def _encode_entry(change: JobChange, room: int) -> bytes:
    if change.job is None:
        return orjson.dumps(["d", change.job_id])
    seq = change.event.seq if change.event is not None else 0
    entry = orjson.dumps(["j", _job_to_wire(change.job), seq], option=orjson.OPT_UTC_Z)
    return entry if len(entry) <= room else orjson.dumps(["r", change.job_id])


def _decoded_entry(kind: str, value: Any, seq: int = 0) -> JobChange | str:
    if kind == "d":
        return JobChange(value, None)
    if kind == "j":
        with contextlib.suppress(KeyError, TypeError, ValueError):
            job = _job_from_wire(value)
            return JobChange(value["id"], job, event_of(job, seq) if seq else None)
        return str(value["id"])  # sent by another version of tarefa: read the job instead
    return str(value)


def _job_to_wire(job: Job) -> dict[str, Any]:
    """The job as JSON data; orjson writes its instants in RFC 3339 (``2026-11-28T15:40:21.606403Z``)."""
    wire = {name: getattr(job, name) for name in JOB_FIELDS}
    wire["error"] = [job.error.code, job.error.message] if job.error else None
    return wire


def _job_from_wire(wire: dict[str, Any]) -> Job:
    values = dict(wire)
    values.update({name: values[name] and _instant(values[name]) for name in TIME_FIELDS})
    values["state"] = JobState(values["state"])
    values["error"] = JobError(*values["error"]) if values["error"] else None
    return Job(**values)


def _instant(text: str) -> datetime:
    """An RFC 3339 instant of a payload, in UTC (ValueError if it has no offset)."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value if value.tzinfo is UTC else value.astimezone(UTC)
