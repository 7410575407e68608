"""The SQL of the SQLite store: schema migrations and the statements it runs.

Timestamps are integers (microseconds since the Unix epoch, UTC); JSON values are text.
"""

from __future__ import annotations

import functools

from .columns import MUTABLE_NAMES, NAMES

#: One script per schema version; ``PRAGMA user_version`` records how many have been applied.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        operation        TEXT NOT NULL,
        state            TEXT NOT NULL,
        message          TEXT NOT NULL,
        progress         INTEGER,
        create_time      INTEGER NOT NULL,
        start_time       INTEGER,
        end_time         INTEGER,
        last_modified    INTEGER NOT NULL,
        result           TEXT,
        error_code       TEXT,
        error_message    TEXT,
        resource         TEXT,
        owner            TEXT NOT NULL,
        input            TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL DEFAULT 1,
        lease_owner      TEXT,
        lease_expires    INTEGER,
        resource_key     TEXT,
        idempotency_key  TEXT,
        request_hash     TEXT,
        answer_status    INTEGER NOT NULL DEFAULT 202
    );
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE UNIQUE INDEX jobs_resource_busy ON jobs (resource_key)
        WHERE resource_key IS NOT NULL AND state IN ('queued', 'running');
    CREATE INDEX jobs_queued ON jobs (create_time, id) WHERE state = 'queued';
    CREATE INDEX jobs_running ON jobs (lease_expires) WHERE state = 'running';
    CREATE INDEX jobs_by_create_time ON jobs (create_time, id);
    CREATE INDEX jobs_by_last_modified ON jobs (last_modified, id);
    CREATE INDEX jobs_ended ON jobs (end_time) WHERE end_time IS NOT NULL;
    CREATE TABLE resources (
        kind TEXT NOT NULL,
        key  TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, key)
    ) WITHOUT ROWID;
    """,
    # 2: the jobs' histories (SPEC §10); a job migrated from version 1 starts with its current state.
    """
    CREATE TABLE job_events (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id        TEXT NOT NULL,
        time          INTEGER NOT NULL,
        state         TEXT NOT NULL,
        message       TEXT NOT NULL,
        progress      INTEGER,
        error_code    TEXT,
        error_message TEXT,
        operation     TEXT NOT NULL,
        owner         TEXT NOT NULL
    );
    CREATE INDEX job_events_by_job ON job_events (job_id, seq);
    INSERT INTO job_events (job_id, time, state, message, progress, error_code, error_message, operation, owner)
        SELECT id, last_modified, state, message, progress, error_code, error_message, operation, owner
        FROM jobs ORDER BY last_modified, id;
    """,
    # 3: callbacks (SPEC §10): the subscription on the job, the outbox, and every attempt.
    """
    ALTER TABLE jobs ADD COLUMN callback TEXT;
    CREATE TABLE callback_outbox (
        id          TEXT PRIMARY KEY,
        job_id      TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        url         TEXT NOT NULL,
        body        BLOB NOT NULL,
        create_time INTEGER NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        due         INTEGER NOT NULL,
        lease_owner TEXT,
        outcome     TEXT
    );
    CREATE INDEX callback_outbox_due ON callback_outbox (due) WHERE outcome IS NULL;
    CREATE INDEX callback_outbox_by_job ON callback_outbox (job_id);
    CREATE TABLE callback_attempts (
        num         INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT NOT NULL,
        job_id      TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        url         TEXT NOT NULL,
        time        INTEGER NOT NULL,
        duration    REAL NOT NULL,
        status      INTEGER,
        error       TEXT,
        outcome     TEXT NOT NULL
    );
    CREATE INDEX callback_attempts_by_job ON callback_attempts (job_id, num);
    """,
)

JOB_COLUMNS = ", ".join(NAMES)

SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"

SELECT_BY_IDEMPOTENCY = (
    f"SELECT {JOB_COLUMNS}, request_hash, answer_status FROM jobs WHERE owner = ? AND idempotency_key = ?"
)

# Every keyed job's pair, for the filter of keys seen (tarefa.store.seen_keys) at open.
COUNT_KEYED = "SELECT count(*) FROM jobs WHERE idempotency_key IS NOT NULL"
SELECT_KEYS = "SELECT owner, idempotency_key FROM jobs WHERE idempotency_key IS NOT NULL"

SELECT_RESOURCE_HOLDER = "SELECT id FROM jobs WHERE resource_key = ? AND state IN ('queued', 'running')"

# Without a conflict target, DO NOTHING covers the id, the idempotency key and the busy resource
# key: the caller learns which one from the lookups that follow.
INSERT_JOB = f"""
    INSERT INTO jobs ({JOB_COLUMNS}, resource_key, idempotency_key, request_hash)
    VALUES ({", ".join("?" * (len(NAMES) + 3))})
    ON CONFLICT DO NOTHING
"""

UPDATE_JOB = f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in MUTABLE_NAMES)} WHERE id = ?"

# A change of a running job, saved only if its row is still the version the change was made from
# (same holder, lease and last change: SaveHeld), with the status of its first answer if given.
UPDATE_HELD_JOB = f"""
    UPDATE jobs SET {", ".join(f"{name} = ?" for name in MUTABLE_NAMES)}, answer_status = coalesce(?, answer_status)
    WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_expires = ? AND last_modified = ?
"""

EVENT_COLUMNS = "seq, job_id, time, state, message, progress, error_code, error_message, operation, owner"

INSERT_EVENT = """
    INSERT INTO job_events (job_id, time, state, message, progress, error_code, error_message, operation, owner)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@functools.cache
def insert_events_sql(n: int) -> str:
    """INSERT_EVENT for ``n`` events in one statement (one step: their seqs follow each other)."""
    return INSERT_EVENT + ", (?, ?, ?, ?, ?, ?, ?, ?, ?)" * (n - 1)


SELECT_EVENTS = f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?"

# One writer commits in seq order: the highest seq stored is settled.
SETTLED_SEQ = "SELECT coalesce(max(seq), 0) FROM job_events"


def all_events_sql(*, by_owner: bool, n_states: int, by_operation: bool) -> str:
    """The events of every job, filtered, ``? < seq <= ?``, oldest first (the seq index)."""
    where = ["seq > ?", "seq <= ?"]
    if by_owner:
        where.append("owner = ?")
    if n_states:
        where.append(f"state IN ({', '.join('?' * n_states)})")
    if by_operation:
        where.append("operation = ?")
    return f"SELECT {EVENT_COLUMNS} FROM job_events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"


COUNT_JOBS = "SELECT state, operation, count(*) FROM jobs GROUP BY state, operation"

UPDATE_ANSWER_STATUS = "UPDATE jobs SET answer_status = ? WHERE id = ?"

SELECT_QUEUED = f"""
    SELECT {JOB_COLUMNS} FROM jobs
    WHERE state = 'queued' AND operation IN (SELECT value FROM json_each(?))
    ORDER BY create_time, id LIMIT ?
"""

COUNT_QUEUED = "SELECT count(*) FROM jobs WHERE state = 'queued'"

SELECT_RUNNING = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' ORDER BY id"

SELECT_EXPIRED = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires < ? ORDER BY id"

SELECT_HELD = f"""
    SELECT {JOB_COLUMNS} FROM jobs
    WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))
    ORDER BY id
"""

RENEW_LEASES = """
    UPDATE jobs SET lease_expires = ?
    WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))
    RETURNING id
"""

DELETE_JOB = "DELETE FROM jobs WHERE id = ?"

DELETE_EVENTS = "DELETE FROM job_events WHERE job_id IN (SELECT value FROM json_each(?))"

PURGE_JOBS = """
    DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs WHERE state IN ('success', 'failure') AND end_time < ? LIMIT ?
    )
    RETURNING id
"""

# -- the callback outbox (tarefa.store.outbox) ---------------------------------------------------

DELIVERY_COLUMNS = "id, job_id, seq, url, body, create_time, attempts"

INSERT_DELIVERY = f"INSERT INTO callback_outbox ({DELIVERY_COLUMNS}, due) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

# One process owns the file: the writer thread runs one claim at a time, nothing to skip.
CLAIM_DELIVERIES = f"""
    UPDATE callback_outbox SET due = ?, lease_owner = ?
    WHERE id IN (
        SELECT id FROM callback_outbox
        WHERE outcome IS NULL AND (due <= ? OR (? AND lease_owner IS NOT NULL))
        ORDER BY due, id LIMIT ?
    )
    RETURNING {DELIVERY_COLUMNS}
"""

RENEW_DELIVERIES = """
    UPDATE callback_outbox SET due = ?
    WHERE outcome IS NULL AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))
"""

INSERT_ATTEMPT = """
    INSERT INTO callback_attempts (delivery_id, job_id, seq, url, time, duration, status, error, outcome)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# due: the next attempt's time (pending) or left as it was (ended); never leased after an attempt.
FINISH_ATTEMPT = """
    UPDATE callback_outbox SET attempts = attempts + 1, lease_owner = NULL, due = coalesce(?, due), outcome = ?
    WHERE id = ?
"""

SELECT_ATTEMPTS = """
    SELECT num, delivery_id, job_id, seq, url, time, duration, status, error, outcome FROM callback_attempts
    WHERE job_id = ? AND num > ? ORDER BY num LIMIT ?
"""

DELETE_CALLBACKS = (
    "DELETE FROM callback_outbox WHERE job_id IN (SELECT value FROM json_each(?))",
    "DELETE FROM callback_attempts WHERE job_id IN (SELECT value FROM json_each(?))",
)

PUT_DOCUMENT = "INSERT OR REPLACE INTO resources (kind, key, data) VALUES (?, ?, ?)"
PUT_DOCUMENT_IF_ABSENT = "INSERT OR IGNORE INTO resources (kind, key, data) VALUES (?, ?, ?)"
GET_DOCUMENT = "SELECT data FROM resources WHERE kind = ? AND key = ?"
LIST_DOCUMENTS = "SELECT data FROM resources WHERE kind = ? ORDER BY key"
DELETE_DOCUMENT = "DELETE FROM resources WHERE kind = ? AND key = ?"


def list_jobs_sql(
    *, order_by: str, descending: bool, by_owner: bool, n_states: int, by_operation: bool, paged: bool
) -> str:
    """The keyset-paged listing query for one combination of filters."""
    if order_by not in ("create_time", "last_modified"):
        raise ValueError(f"cannot order by {order_by!r}")
    where = []
    if by_owner:
        where.append("owner = ?")
    if n_states:
        where.append(f"state IN ({', '.join('?' * n_states)})")
    if by_operation:
        where.append("operation = ?")
    direction, compare = ("DESC", "<") if descending else ("ASC", ">")
    if paged:
        where.append(f"({order_by}, id) {compare} (?, ?)")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY {order_by} {direction}, id {direction} LIMIT ?"
