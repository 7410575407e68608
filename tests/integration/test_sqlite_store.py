"""The embedded store's own machinery, on a real SQLite file: the checkpointer keeps the WAL short
off the commit path (and SQLite's own checkpoint still bounds it when the checkpointer cannot keep
up), a write alone in its transaction that fails leaves nothing behind, a failing call of a
batch is undone alone, and a key no job has is known new without a read."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tarefa.model import JobState, new_job, utcnow
from tarefa.store import Idempotency, IdempotencyMismatch, Outcome, StoreError, sqlite_connection
from tarefa.store.base import Claim
from tarefa.store.sqlite import EVENTS_PER_STATEMENT, WAL_CHECKPOINT_PAGES, WAL_SIZE_LIMIT, SQLiteStore
from tarefa.store.sqlite_connection import CHECKPOINT_COMMITS

pytestmark = pytest.mark.anyio


async def _job_through(store: SQLiteStore, n: int) -> None:
    job = new_job("thing.make", now=utcnow(), input={"n": n, "pad": "x" * 500})
    created = await store.create_job(job, claim=Claim("w1", 30.0))
    assert created.claimed is not None
    assert await store.finish_job(job.id, "w1", Outcome(JobState.SUCCESS, result={"n": n})) is not None


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now, as a checkpoint of another connection sees them (0: none)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        conn.close()


async def test_the_checkpointer_copies_the_wal_back_and_the_wal_starts_over(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        for n in range(300):
            await _job_through(store, n)
            if n % 50 == 49:
                await asyncio.sleep(0.05)  # idle moments, as between bursts of calls
        checkpointer = store._checkpointer
        assert checkpointer is not None
        assert checkpointer.checkpoints >= 300 * 2 // CHECKPOINT_COMMITS - 2  # asked every CHECKPOINT_COMMITS commits
        await asyncio.sleep(0.05)
        wal = tmp_path / "t.db-wal"
        assert wal.stat().st_size <= WAL_SIZE_LIMIT + 128 * 1024, wal.stat().st_size
        # The last checkpoint copied every frame (nothing was busy), and the database file
        # holds the jobs without the WAL's help.
        assert checkpointer.last is not None and checkpointer.last[1] == checkpointer.last[2]
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'success'").fetchone()[0] == 300
    conn.close()


async def test_the_wal_stays_bounded_under_a_load_with_no_pause(tmp_path: Path) -> None:
    """32 callers at once leave the writer no idle moment; the WAL still stops growing."""
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:

        async def caller(first: int) -> None:
            for n in range(first, first + 40):
                await _job_through(store, n)

        await asyncio.gather(*(caller(i * 1000) for i in range(32)))
        frames = _wal_frames(tmp_path / "t.db")
        assert frames <= WAL_CHECKPOINT_PAGES + 400, frames  # and a batch's worth over
        assert (tmp_path / "t.db-wal").stat().st_size <= 4 * WAL_SIZE_LIMIT
    finally:
        await store.close()


async def test_a_failing_write_alone_in_its_transaction_keeps_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        changes: list[object] = []
        store.add_listener(changes.extend)

        def work(conn: sqlite3.Connection) -> tuple[None, list[object]]:
            conn.execute("INSERT INTO resources (kind, key, data) VALUES ('k', 'a', '{}')")
            conn.execute("INSERT INTO no_such_table VALUES (1)")
            raise AssertionError("not reached")

        with pytest.raises(StoreError):
            await store._call(work)  # type: ignore[arg-type]
        assert await store.get_document("k", "a") is None
        assert changes == []
        assert await store.put_document("k", "b", {"ok": True})  # the writer goes on
        assert await store.get_document("k", "b") == {"ok": True}
    finally:
        await store.close()


async def _in_one_batch(store: SQLiteStore, works: list[Any]) -> list[Any]:
    """Run ``works`` in one batch of the writer: they are queued while it runs a call that waits
    for them. Each one's result, or the exception it raised."""
    running, queued = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> tuple[None, list[object]]:
        running.set()
        assert queued.wait(10)
        return None, []

    assert store._writer is not None
    first = store._writer.call(hold)  # type: ignore[arg-type]
    assert await asyncio.to_thread(running.wait, 10)
    futures = [store._writer.call(work) for work in works]
    queued.set()
    await first
    return await asyncio.gather(*futures, return_exceptions=True)


def _put(key: str, then_fail: str | None = None) -> Any:
    def work(conn: sqlite3.Connection) -> tuple[str, list[object]]:
        conn.execute("INSERT INTO resources (kind, key, data) VALUES ('k', ?, '{}')", (key,))
        if then_fail == "sql":
            conn.execute("INSERT INTO no_such_table VALUES (1)")
        elif then_fail == "python":
            raise ValueError("a bug after a write")
        return key, []

    return work


def _fail_before_writing(conn: sqlite3.Connection) -> tuple[None, list[object]]:
    conn.execute("SELECT count(*) FROM resources").fetchone()
    raise LookupError("a rule says no (nothing written)")


async def test_in_a_batch_a_failing_call_is_undone_alone_and_the_others_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls of one batch share a transaction without savepoints; a call that fails after
    writing makes the writer undo the batch and write it again with a savepoint per call; one
    that fails before writing needs no second pass. Either way only the failing call is lost."""
    passes: list[int] = []
    with_savepoints = sqlite_connection._savepoint_transaction

    def counted(conn: sqlite3.Connection, calls: list[Any]) -> Any:
        passes.append(len(calls))
        return with_savepoints(conn, calls)

    monkeypatch.setattr(sqlite_connection, "_savepoint_transaction", counted)
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        results = await _in_one_batch(store, [_put("a"), _fail_before_writing, _put("b")])
        assert results[0] == "a" and results[2] == "b"
        assert isinstance(results[1], LookupError)
        assert passes == []  # nothing to undo: no second pass

        for how in ("sql", "python"):
            results = await _in_one_batch(store, [_put(f"c-{how}"), _put(f"bad-{how}", how), _put(f"d-{how}")])
            assert results[0] == f"c-{how}" and results[2] == f"d-{how}"
            assert isinstance(results[1], StoreError if how == "sql" else ValueError)
        assert passes == [3, 3]  # the failing call had written: the batch again, with savepoints

        keys = {doc_key for (doc_key,) in sqlite3.connect(tmp_path / "t.db").execute("SELECT key FROM resources")}
        assert keys == {"a", "b", "c-sql", "d-sql", "c-python", "d-python"}
    finally:
        await store.close()


async def test_events_written_together_are_announced_with_the_seqs_they_were_stored_under(tmp_path: Path) -> None:
    """A claim's two events, and the events of a claim of many jobs (more than one statement
    holds), are each inserted by one statement; what listeners hear is what the file holds."""
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        heard: list[Any] = []
        store.add_listener(heard.extend)
        claimed = new_job("thing.make", now=utcnow())
        await store.create_job(claimed, claim=Claim("w1", 30.0))
        queued = [new_job("thing.make", now=utcnow()) for _ in range(EVENTS_PER_STATEMENT + 7)]
        for job in queued:
            await store.create_job(job)
        started = await store.claim_jobs("w2", operations=("thing.make",), limit=len(queued), lease_seconds=30.0)
        assert {job.id for job in started} == {job.id for job in queued}
    finally:
        await store.close()
    events = [(c.event.seq, c.job_id, c.event.state.value) for c in heard if c.event is not None]
    assert len(events) == 2 + 2 * len(queued)
    conn = sqlite3.connect(tmp_path / "t.db")
    stored = conn.execute("SELECT seq, job_id, state FROM job_events ORDER BY seq").fetchall()
    conn.close()
    assert sorted(events) == stored


def test_the_store_latency_tool_measures_jobs() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "bench.store_latency", "--jobs", "40", "--think-ms", "0"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"synchronous=full: 40 jobs, two commits each: p50 \d+ µs, p90 \d+ µs, p99 \d+ µs; "
                        r"\d+ µs CPU per job \(every thread\)\n", done.stdout), done.stdout  # fmt: skip


def _count_inline_reads(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The store's reads on the event loop's connection from now on."""
    reads: list[object] = []
    read = store._read_inline

    def counted(step: object) -> object:
        reads.append(step)
        return read(step)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_read_inline", counted)
    return reads


async def test_a_crowded_filter_of_keys_is_scanned_again_into_a_bigger_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived store adds more keys than its filter was sized for: it scans the file again
    into a bigger filter, so new keys keep costing no read, and every key stored still replays."""
    from tarefa.store import seen_keys

    monkeypatch.setattr(seen_keys, "MIN_BITS", 1024)  # 64 pairs
    store = SQLiteStore(tmp_path / "keys.db")
    await store.open()
    try:
        created = [await store.create_job(new_job("thing.make", now=utcnow(), owner="ana"),
                                          idempotency=Idempotency(f"k{n}", "h")) for n in range(300)]  # fmt: skip
        async with asyncio.timeout(10):  # the last scan, into a filter big enough
            while store._key_scan is None or not store._key_scan.done():
                await asyncio.sleep(0.01)
        assert store._seen is not None and store._seen._filter.capacity >= 300
        reads = _count_inline_reads(store, monkeypatch)
        for n, first in enumerate(created):
            replayed = await store.replay_idempotent("ana", Idempotency(f"k{n}", "h"))
            assert replayed is not None and replayed.job.id == first.job.id
        assert len(reads) == 300
        assert [await store.replay_idempotent("ana", Idempotency(f"new-{n}", "h")) for n in range(200)] == [None] * 200
        assert len(reads) <= 300 + 4
    finally:
        await store.close()


async def test_a_new_key_is_known_new_without_a_read_and_a_seen_one_is_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter of keys seen (tarefa.store.seen_keys) is built from the file at open and grows
    with each keyed insert: a key no job has is answered without a read; every other one is read."""
    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    await store.open()
    key = Idempotency("key-1", "hash-1")
    first = await store.create_job(new_job("thing.make", now=utcnow(), owner="ana"), idempotency=key)
    await store.close()

    store = SQLiteStore(path)  # a new process, as after a restart: the filter comes from the file
    await store.open()
    try:
        reads = _count_inline_reads(store, monkeypatch)
        replayed = await store.replay_idempotent("ana", key)
        assert replayed is not None and replayed.job.id == first.job.id and len(reads) == 1
        with pytest.raises(IdempotencyMismatch):
            await store.replay_idempotent("ana", Idempotency("key-1", "another request"))
        assert len(reads) == 2
        new = [await store.replay_idempotent(owner, Idempotency(f"new-{n}", "h")) for n in range(200) for owner in
               ("ana", "bea")]  # fmt: skip
        assert new == [None] * 400
        assert len(reads) <= 2 + 4  # a false positive reads (0.2 % of new keys here)
        # Another owner's key of the same name is not the same pair.
        assert await store.replay_idempotent("bea", key) is None
        second = await store.create_job(new_job("thing.make", now=utcnow(), owner="bea"), idempotency=key)
        replayed = await store.replay_idempotent("bea", key)
        assert replayed is not None and replayed.job.id == second.job.id
    finally:
        await store.close()
