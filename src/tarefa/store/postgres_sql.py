"""The SQL of the PostgreSQL store, kept apart so that it reads as SQL.

``MIGRATIONS[n]`` brings the schema from version ``n`` to ``n + 1``; a released migration is never
edited, only followed by a new one. Every table name starts with ``tarefa_`` so the store can share a
database with the application. Identifiers and keys use the "C" collation: byte order, the same
order as SQLite, whatever the database's locale.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..model import FIELDS
from .base import EventQuery, JobQuery
from .columns import COLUMNS, MUTABLE_COLUMNS, MUTABLE_NAMES, NAMES

#: Channel of the ``pg_notify`` announcements (one per database).
CHANNEL = "tarefa_jobs"
#: Largest entry of one job in a notification built by a statement (as postgres_listen's limit).
NOTIFY_ENTRY_LIMIT = 6900

#: Key of the advisory lock held while migrating (any constant bigint unlikely to collide).
MIGRATION_LOCK = 7_342_096_185_113_221_001

MIGRATIONS: list[str] = [
    # 1: jobs, the ids of deleted jobs (for listeners that reconnect), resources.
    """
    CREATE TABLE tarefa_jobs (
        id               text COLLATE "C" PRIMARY KEY,
        operation        text NOT NULL,
        state            text NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failure')),
        message          text NOT NULL,
        progress         integer,
        create_time      timestamptz NOT NULL,
        start_time       timestamptz,
        end_time         timestamptz,
        last_modified    timestamptz NOT NULL,
        result           jsonb,
        error_code       text,
        error_message    text,
        resource         text,
        owner            text NOT NULL,
        input            jsonb,
        cancel_requested boolean NOT NULL DEFAULT false,
        attempts         integer NOT NULL DEFAULT 0,
        max_attempts     integer NOT NULL DEFAULT 1,
        lease_owner      text,
        lease_expires    timestamptz,
        idempotency_key  text,
        request_hash     text,
        answer_status    integer NOT NULL DEFAULT 202,
        resource_key     text,
        CONSTRAINT tarefa_jobs_idempotency UNIQUE (owner, idempotency_key)
    );
    -- SPEC §2: one non-terminal job per resource key, enforced across processes.
    CREATE UNIQUE INDEX tarefa_jobs_resource_busy ON tarefa_jobs (resource_key)
        WHERE resource_key IS NOT NULL AND state IN ('queued', 'running');
    CREATE INDEX tarefa_jobs_queued ON tarefa_jobs (create_time, id) WHERE state = 'queued';
    CREATE INDEX tarefa_jobs_leases ON tarefa_jobs (lease_expires) WHERE state = 'running';
    CREATE INDEX tarefa_jobs_ended ON tarefa_jobs (end_time) WHERE state IN ('success', 'failure');
    CREATE INDEX tarefa_jobs_by_create_time ON tarefa_jobs (create_time, id);
    CREATE INDEX tarefa_jobs_by_last_modified ON tarefa_jobs (last_modified, id);
    CREATE INDEX tarefa_jobs_by_owner ON tarefa_jobs (owner, create_time, id);

    CREATE TABLE tarefa_deleted_jobs (
        id         text COLLATE "C" PRIMARY KEY,
        deleted_at timestamptz NOT NULL
    );
    CREATE INDEX tarefa_deleted_jobs_by_time ON tarefa_deleted_jobs (deleted_at);

    CREATE TABLE tarefa_resources (
        kind text COLLATE "C" NOT NULL,
        key  text COLLATE "C" NOT NULL,
        data jsonb NOT NULL,
        PRIMARY KEY (kind, key)
    );
    """,
    # 2: the jobs' histories (SPEC §10); a job migrated from version 1 starts with its current state.
    """
    CREATE TABLE tarefa_job_events (
        seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id        text COLLATE "C" NOT NULL,
        time          timestamptz NOT NULL,
        state         text NOT NULL,
        message       text NOT NULL,
        progress      integer,
        error_code    text,
        error_message text,
        operation     text NOT NULL,
        owner         text NOT NULL
    );
    CREATE INDEX tarefa_job_events_by_job ON tarefa_job_events (job_id, seq);
    INSERT INTO tarefa_job_events (job_id, time, state, message, progress, error_code, error_message, operation, owner)
        SELECT id, last_modified, state, message, progress, error_code, error_message, operation, owner
        FROM tarefa_jobs ORDER BY last_modified, id;
    """,
    # 3: callbacks (SPEC §10): the subscription on the job, the outbox, and every attempt.
    """
    ALTER TABLE tarefa_jobs ADD COLUMN callback jsonb;
    CREATE TABLE tarefa_callback_outbox (
        id          text COLLATE "C" PRIMARY KEY,
        job_id      text COLLATE "C" NOT NULL,
        seq         bigint NOT NULL,
        url         text NOT NULL,
        body        bytea NOT NULL,
        create_time timestamptz NOT NULL,
        attempts    integer NOT NULL DEFAULT 0,
        due         timestamptz NOT NULL,
        lease_owner text,
        outcome     text
    );
    CREATE INDEX tarefa_callback_outbox_due ON tarefa_callback_outbox (due) WHERE outcome IS NULL;
    CREATE INDEX tarefa_callback_outbox_by_job ON tarefa_callback_outbox (job_id);
    CREATE TABLE tarefa_callback_attempts (
        num         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id text COLLATE "C" NOT NULL,
        job_id      text COLLATE "C" NOT NULL,
        seq         bigint NOT NULL,
        url         text NOT NULL,
        time        timestamptz NOT NULL,
        duration    double precision NOT NULL,
        status      integer,
        error       text,
        outcome     text NOT NULL
    );
    CREATE INDEX tarefa_callback_attempts_by_job ON tarefa_callback_attempts (job_id, num);
    """,
    # 4: the instant until which the job's end records 200 as its first answer's status (a call
    # with an Idempotency-Key and return_timeout answered by another process than the job's).
    """
    ALTER TABLE tarefa_jobs ADD COLUMN answer_by timestamptz;
    """,
]

# -- schema version -------------------------------------------------------------------------------

# Held until the migrating transaction ends, so that processes starting together migrate one by one.
LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock(%(key)s)"

VERSION_TABLE_EXISTS = "SELECT to_regclass('tarefa_schema_version') IS NOT NULL AS present"

CREATE_VERSION_TABLE = "CREATE TABLE tarefa_schema_version (version integer NOT NULL)"

COUNT_JOBS = "SELECT state, operation, count(*) AS n FROM tarefa_jobs GROUP BY state, operation"

SELECT_VERSION = "SELECT coalesce(max(version), 0) AS version FROM tarefa_schema_version"

CLEAR_VERSION = "DELETE FROM tarefa_schema_version"

INSERT_VERSION = "INSERT INTO tarefa_schema_version (version) VALUES (%(version)s)"

# -- jobs -------------------------------------------------------------------------------------------

_JOB_COLUMNS = ", ".join(NAMES)
_JOB_VALUES = ", ".join(f"%({name})s" for name in NAMES)
#: The columns of a job's event, as read from the job's row.
_EVENT_OF_JOB = "id, last_modified, state, message, progress, error_code, error_message, operation, owner"
_EVENT_COLUMNS = "job_id, time, state, message, progress, error_code, error_message, operation, owner"
_PG_TYPES = {"int": "integer", "bool": "boolean", "time": "timestamptz", "json": "jsonb"}
#: An end before ``answer_by`` records 200 as the first answer's status, in its own statement: the
#: call that holds its answer (``return_timeout``) in another process then needs no write of its own.
_ANSWERED_BY_END = "answer_status = CASE WHEN %(end_time)s::timestamptz <= answer_by THEN 200 ELSE answer_status END"

# ON CONFLICT without a target covers the id, the idempotency key and the busy resource key: the
# caller finds out which one from the empty result, without an error in the server's log. The
# job's first event is written by the same statement.
INSERT_JOB = f"""
    WITH inserted AS (
        INSERT INTO tarefa_jobs ({_JOB_COLUMNS}, idempotency_key, request_hash, resource_key, answer_by)
        VALUES ({_JOB_VALUES}, %(idempotency_key)s, %(request_hash)s, %(resource_key)s, %(answer_by)s)
        ON CONFLICT DO NOTHING
        RETURNING {_EVENT_OF_JOB}
    )
    INSERT INTO tarefa_job_events ({_EVENT_COLUMNS}) SELECT {_EVENT_OF_JOB} FROM inserted
    RETURNING seq
"""


# A lone write runs as one statement in autocommit mode (see postgres_batch): the statement also
# sends its own notification, built around the event's seq (the payload's two parts are given).
_ANNOUNCE = f"pg_notify('{CHANNEL}', %(announce_before)s::text || seq || %(announce_after)s::text)::text AS announced"


def _seq_and(announce: bool) -> str:
    return f"SELECT seq, {_ANNOUNCE} FROM event" if announce else "SELECT seq FROM event"


def insert_job(*, announce: bool) -> str:
    """INSERT_JOB, with its notification if ``announce``: the seq of the job's first event, or no
    row if the insert met a conflict (the full rule then runs: idempotent replay, resource busy)."""
    return f"""
    WITH inserted AS (
        INSERT INTO tarefa_jobs ({_JOB_COLUMNS}, idempotency_key, request_hash, resource_key, answer_by)
        VALUES ({_JOB_VALUES}, %(idempotency_key)s, %(request_hash)s, %(resource_key)s, %(answer_by)s)
        ON CONFLICT DO NOTHING
        RETURNING {_EVENT_OF_JOB}
    ),
        event AS (INSERT INTO tarefa_job_events ({_EVENT_COLUMNS}) SELECT {_EVENT_OF_JOB} FROM inserted RETURNING seq)
    {_seq_and(announce)}
"""


def update_held_job(*, announce: bool) -> str:
    """A change of a running job, saved only if its row is still the version the change was made
    from (``held_*``: same last change, same lease, same holder); else no row, and the full rule
    runs (load the job locked, apply the transition, save)."""
    return f"""
    WITH changed AS (
        UPDATE tarefa_jobs SET {", ".join(f"{name} = %({name})s" for name in MUTABLE_NAMES)}, {_ANSWERED_BY_END}
        WHERE id = %(id)s AND state = 'running' AND lease_owner = %(held_by)s
            AND last_modified = %(held_last_modified)s AND lease_expires = %(held_lease_expires)s
        RETURNING {_EVENT_OF_JOB}
    ),
        event AS (INSERT INTO tarefa_job_events ({_EVENT_COLUMNS}) SELECT {_EVENT_OF_JOB} FROM changed RETURNING seq)
    {_seq_and(announce)}
"""


def _wire_json(row: str) -> str:
    """The job of ``row`` as the JSON of a notification (what ``_job_to_wire`` makes of it)."""
    values: list[str] = []
    for field in FIELDS:
        if field.kind == "error":
            value = (
                f"CASE WHEN {row}.error_code IS NULL THEN NULL"
                f" ELSE json_build_array({row}.error_code, {row}.error_message) END"
            )
        else:
            value = f"{row}.{field.name}"
        values.append(f"'{field.name}', {value}")
    return f"json_build_object({', '.join(values)})::text"


def claim_jobs(*, announce: bool) -> str:
    """Claim up to ``limit`` queued jobs in one statement: :func:`tarefa.model.start` written in
    SQL (tests hold the two to the same result), with each job's event. Always one row at least:
    ``picked`` counts the jobs locked, the other columns are NULL when none was claimed.

    With ``announce`` (the statement is its own transaction), each claimed job is notified too
    (``["r", id]`` if too large to send); and if a job picked wants a callback for this event
    (``events: all``), none is claimed (``picked`` > 0 then says so): its outbox row must be
    written in the same transaction, which a full claim does."""
    entry = f"""'["j",' || {_wire_json("started")} || ',' || event.seq || ']'"""
    notify = f"""CASE WHEN claimed.id IS NOT NULL THEN pg_notify('{CHANNEL}', %(announce_head)s::text || CASE
            WHEN octet_length(claimed.entry) <= {NOTIFY_ENTRY_LIMIT} THEN claimed.entry
            ELSE '["r",' || to_json(claimed.id)::text || ']' END || ']}}')::text END AS announced"""
    refuse = "AND NOT EXISTS (SELECT 1 FROM picked WHERE picked.calls)" if announce else ""
    return f"""
    WITH picked AS (
        SELECT id, coalesce(callback->>'events' = 'all', false) AS calls FROM tarefa_jobs
        WHERE state = 'queued' AND operation = ANY(%(operations)s)
        ORDER BY create_time, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ),
        started AS (
        UPDATE tarefa_jobs AS job SET
            state = 'running',
            message = 'Running',
            start_time = greatest(%(now)s, job.last_modified + interval '1 microsecond'),
            last_modified = greatest(%(now)s, job.last_modified + interval '1 microsecond'),
            attempts = job.attempts + 1,
            lease_owner = %(worker)s,
            lease_expires = %(lease_expires)s
        FROM picked WHERE job.id = picked.id {refuse}
        RETURNING job.*
    ),
        event AS (
        INSERT INTO tarefa_job_events ({_EVENT_COLUMNS})
        SELECT {_EVENT_OF_JOB} FROM started ORDER BY create_time, id
        RETURNING job_id, seq
    ),
        claimed AS (
        SELECT started.*, event.seq, {entry if announce else "NULL"} AS entry
        FROM started JOIN event ON event.job_id = started.id
    )
    SELECT claimed.*, (SELECT count(*) FROM picked) AS picked{", " + notify if announce else ""}
    FROM (SELECT 1) AS one LEFT JOIN claimed ON true
    ORDER BY claimed.create_time, claimed.id
"""


INSERT_JOB_ANNOUNCED = insert_job(announce=True)
INSERT_JOB_QUIET = insert_job(announce=False)
UPDATE_HELD_JOB_ANNOUNCED = update_held_job(announce=True)
UPDATE_HELD_JOB_QUIET = update_held_job(announce=False)
CLAIM_JOBS_ANNOUNCED = claim_jobs(announce=True)
CLAIM_JOBS_QUIET = claim_jobs(announce=False)


def list_jobs(query: JobQuery) -> tuple[sql.Composed, dict[str, Any]]:
    """The page of jobs ``query`` asks for: a statement and its parameters (keyset paging)."""
    if query.order_by not in ("create_time", "last_modified"):
        raise ValueError(f"jobs can be ordered by create_time or last_modified, not {query.order_by!r}")
    column = sql.Identifier(query.order_by)
    direction = sql.SQL("DESC" if query.descending else "ASC")
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": max(0, query.limit)}
    if query.owner is not None:
        conditions.append(sql.SQL("owner = %(owner)s"))
        params["owner"] = query.owner
    if query.states:
        conditions.append(sql.SQL("state = ANY(%(states)s)"))
        params["states"] = sorted(state.value for state in query.states)
    if query.operation is not None:
        conditions.append(sql.SQL("operation = %(operation)s"))
        params["operation"] = query.operation
    if query.after is not None:
        beyond = sql.SQL("<" if query.descending else ">")
        conditions.append(sql.SQL("({}, id) {} (%(after_value)s, %(after_id)s)").format(column, beyond))
        params["after_value"], params["after_id"] = query.after
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    statement = sql.SQL("SELECT * FROM tarefa_jobs{} ORDER BY {} {}, id {} LIMIT %(limit)s").format(
        where, column, direction, direction
    )
    return statement, params


# A change and its event, in one statement.
UPDATE_JOB = f"""
    WITH changed AS (
        UPDATE tarefa_jobs SET {", ".join(f"{name} = %({name})s" for name in MUTABLE_NAMES)}, {_ANSWERED_BY_END}
        WHERE id = %(id)s
        RETURNING {_EVENT_OF_JOB}
    )
    INSERT INTO tarefa_job_events ({_EVENT_COLUMNS}) SELECT {_EVENT_OF_JOB} FROM changed
    RETURNING job_id, seq
"""

#: The columns :data:`UPDATE_JOBS` writes: each parameter is the list of one column's new values.
UPDATE_JOBS_COLUMNS = ("id", *(column.name for column in MUTABLE_COLUMNS))

# Several jobs in one statement (a claim): UPDATE_JOB for each, one array per column.
UPDATE_JOBS = f"""
    WITH changed AS (
        UPDATE tarefa_jobs AS job SET {", ".join(f"{name} = given.{name}" for name in MUTABLE_NAMES)},
            answer_status = CASE WHEN given.end_time <= job.answer_by THEN 200 ELSE job.answer_status END
        FROM unnest({
    ", ".join(
        f"%({column.name})s::{_PG_TYPES.get(column.field.kind, 'text')}[]" for column in (COLUMNS[0], *MUTABLE_COLUMNS)
    )
}) AS given ({", ".join(UPDATE_JOBS_COLUMNS)})
        WHERE job.id = given.id
        RETURNING job.id, job.last_modified, job.state, job.message, job.progress, job.error_code,
            job.error_message, job.operation, job.owner
    )
    INSERT INTO tarefa_job_events ({_EVENT_COLUMNS}) SELECT {_EVENT_OF_JOB} FROM changed
    RETURNING job_id, seq
"""

SELECT_EVENTS = f"""
    SELECT seq, {_EVENT_COLUMNS} FROM tarefa_job_events
    WHERE job_id = %(id)s AND seq > %(after)s ORDER BY seq LIMIT %(limit)s
"""

# The highest seq stored, and a transaction id given after it was read (this statement's own): every
# transaction that holds a seq up to it has a lower id (SPEC §10; see PgSteps._settled_seq).
LATEST_SEQ = """
    SELECT coalesce(max(seq), 0) AS seq, pg_current_xact_id()::text AS xid FROM tarefa_job_events
"""

# How many transactions with a lower id than that are still in progress. Not pg_xact_status(): a
# transaction is marked committed there a moment before new snapshots see its rows.
STILL_IN_PROGRESS = """
    SELECT count(*) AS n FROM pg_snapshot_xip(pg_current_snapshot()) AS xid WHERE xid < %(xid)s::xid8
"""


def all_events(query: EventQuery, upto: int) -> tuple[sql.Composed, dict[str, Any]]:
    """The events of every job, filtered, ``after < seq <= upto``, oldest first (by the primary key)."""
    conditions: list[sql.Composable] = [sql.SQL("seq > %(after)s"), sql.SQL("seq <= %(upto)s")]
    params: dict[str, Any] = {"after": query.after, "upto": upto, "limit": max(0, query.limit)}
    if query.owner is not None:
        conditions.append(sql.SQL("owner = %(owner)s"))
        params["owner"] = query.owner
    if query.states:
        conditions.append(sql.SQL("state = ANY(%(states)s)"))
        params["states"] = sorted(state.value for state in query.states)
    if query.operation is not None:
        conditions.append(sql.SQL("operation = %(operation)s"))
        params["operation"] = query.operation
    statement = sql.SQL("SELECT seq, {} FROM tarefa_job_events WHERE {} ORDER BY seq LIMIT %(limit)s").format(
        sql.SQL(_EVENT_COLUMNS), sql.SQL(" AND ").join(conditions)
    )
    return statement, params


SELECT_JOB = """
    SELECT * FROM tarefa_jobs
    WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner = %(owner)s)
"""

SELECT_JOB_FOR_UPDATE = SELECT_JOB + " FOR UPDATE"

SELECT_JOBS = "SELECT * FROM tarefa_jobs WHERE id = ANY(%(ids)s)"

SELECT_IDEMPOTENT_JOB = """
    SELECT * FROM tarefa_jobs WHERE owner = %(owner)s AND idempotency_key = %(key)s
"""

# Every keyed job's pair, for the filter of keys seen (tarefa.store.seen_keys) at open.
SELECT_KEYS = "SELECT owner, idempotency_key FROM tarefa_jobs WHERE idempotency_key IS NOT NULL"
COUNT_KEYS = "SELECT count(*) FROM tarefa_jobs WHERE idempotency_key IS NOT NULL"

SELECT_RESOURCE_HOLDER = """
    SELECT id FROM tarefa_jobs
    WHERE resource_key = %(resource_key)s AND state IN ('queued', 'running')
"""

COUNT_QUEUED = "SELECT count(*) AS count FROM tarefa_jobs WHERE state = 'queued'"

# The status a call answered, for good: no later end changes it (answer_by cleared).
SET_ANSWER_STATUS = "UPDATE tarefa_jobs SET answer_status = %(status)s, answer_by = NULL WHERE id = %(id)s"

CLAIM_JOBS = """
    SELECT * FROM tarefa_jobs
    WHERE state = 'queued' AND operation = ANY(%(operations)s)
    ORDER BY create_time, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
"""

SELECT_HELD_JOBS = """
    SELECT * FROM tarefa_jobs
    WHERE id = ANY(%(ids)s) AND state = 'running' AND lease_owner = %(worker)s
    ORDER BY id
    FOR UPDATE
"""

RENEW_LEASES = """
    UPDATE tarefa_jobs SET lease_expires = %(lease_expires)s
    WHERE id = ANY(%(ids)s) AND state = 'running' AND lease_owner = %(worker)s
    RETURNING id
"""

# Another process recovering at the same time skips the rows this one holds, and the other way round.
SELECT_LOST_JOBS = """
    SELECT * FROM tarefa_jobs
    WHERE state = 'running' AND (%(now)s::timestamptz IS NULL OR lease_expires < %(now)s)
    ORDER BY id
    FOR UPDATE SKIP LOCKED
"""

DELETE_JOB = """
    WITH gone AS (DELETE FROM tarefa_jobs WHERE id = %(id)s RETURNING id),
        history AS (DELETE FROM tarefa_job_events WHERE job_id IN (SELECT id FROM gone))
    INSERT INTO tarefa_deleted_jobs (id, deleted_at) SELECT id, %(now)s FROM gone
    ON CONFLICT (id) DO UPDATE SET deleted_at = excluded.deleted_at
"""

# One batch of a purge; SKIP LOCKED leaves a job that is being deleted elsewhere to that process.
PURGE_JOBS = """
    WITH gone AS (
        DELETE FROM tarefa_jobs WHERE id IN (
            SELECT id FROM tarefa_jobs
            WHERE state IN ('success', 'failure') AND end_time < %(ended_before)s
            LIMIT %(batch)s
            FOR UPDATE SKIP LOCKED
        )
        RETURNING id
    ),
        history AS (DELETE FROM tarefa_job_events WHERE job_id IN (SELECT id FROM gone))
    INSERT INTO tarefa_deleted_jobs (id, deleted_at) SELECT id, %(now)s FROM gone
    ON CONFLICT (id) DO UPDATE SET deleted_at = excluded.deleted_at
    RETURNING id
"""

# -- the callback outbox (tarefa.store.outbox) ---------------------------------------------------

_DELIVERY_COLUMNS = "id, job_id, seq, url, body, create_time, attempts"

INSERT_DELIVERIES = f"""
    INSERT INTO tarefa_callback_outbox ({_DELIVERY_COLUMNS}, due)
    SELECT *, given.create_time FROM unnest(
        %(id)s::text[], %(job_id)s::text[], %(seq)s::bigint[], %(url)s::text[], %(body)s::bytea[],
        %(create_time)s::timestamptz[], %(attempts)s::integer[]
    ) AS given (id, job_id, seq, url, body, create_time, attempts)
"""

# Workers of every process claim at once: each skips the rows another one is claiming.
CLAIM_DELIVERIES = f"""
    UPDATE tarefa_callback_outbox SET due = %(lease_until)s, lease_owner = %(worker)s
    WHERE id IN (
        SELECT id FROM tarefa_callback_outbox
        WHERE outcome IS NULL AND (due <= %(now)s OR (%(recover)s AND lease_owner IS NOT NULL))
        ORDER BY due, id LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING {_DELIVERY_COLUMNS}
"""

RENEW_DELIVERIES = """
    UPDATE tarefa_callback_outbox SET due = %(lease_until)s
    WHERE id = ANY(%(ids)s) AND outcome IS NULL AND lease_owner = %(worker)s
"""

RECORD_ATTEMPT = """
    WITH attempt AS (
        INSERT INTO tarefa_callback_attempts (delivery_id, job_id, seq, url, time, duration, status, error, outcome)
        VALUES (%(delivery_id)s, %(job_id)s, %(seq)s, %(url)s, %(time)s, %(duration)s, %(status)s, %(error)s,
            %(outcome)s)
    )
    UPDATE tarefa_callback_outbox
    SET attempts = attempts + 1, lease_owner = NULL, due = coalesce(%(next_due)s, due), outcome = %(final)s
    WHERE id = %(delivery_id)s
"""

SELECT_ATTEMPTS = """
    SELECT num, delivery_id, job_id, seq, url, time, duration, status, error, outcome FROM tarefa_callback_attempts
    WHERE job_id = %(id)s AND num > %(after)s ORDER BY num LIMIT %(limit)s
"""

DELETE_CALLBACKS = """
    WITH outbox AS (DELETE FROM tarefa_callback_outbox WHERE job_id = ANY(%(ids)s))
    DELETE FROM tarefa_callback_attempts WHERE job_id = ANY(%(ids)s)
"""

FORGET_DELETED_JOBS = "DELETE FROM tarefa_deleted_jobs WHERE deleted_at < %(before)s"

LISTEN = f"LISTEN {CHANNEL}"

HEARTBEAT = "SELECT 1"

# What a listener that was disconnected may have missed (see PostgresStore's reconnection).
CHANGED_SINCE = "SELECT * FROM tarefa_jobs WHERE last_modified >= %(since)s ORDER BY last_modified, id"

DELETED_SINCE = "SELECT id FROM tarefa_deleted_jobs WHERE deleted_at >= %(since)s ORDER BY id"

# -- group commit (see tarefa.store.postgres_batch) ---------------------------------------------------
# Sent on autocommit connections as plain statements, several in one round trip.

#: Longest wait for a lock in a writer's transaction.
LOCK_TIMEOUT = "200ms"

BEGIN = "BEGIN"

BEGIN_WITH_LOCK_TIMEOUT = f"BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"

# The first run of a batch failed: roll it back and run it again, each write in a savepoint.
BEGIN_CAREFUL = f"ROLLBACK; {BEGIN_WITH_LOCK_TIMEOUT}; SAVEPOINT tarefa_call"

NEXT_CALL = "RELEASE SAVEPOINT tarefa_call; SAVEPOINT tarefa_call"

UNDO_CALL = "ROLLBACK TO SAVEPOINT tarefa_call"

ROLLBACK = "ROLLBACK"


def announce_and_commit(payloads: list[str], *, lift_lock_timeout: bool) -> sql.Composed:
    """One ``NOTIFY`` per payload, then ``COMMIT``; first, the lock timeout is lifted if asked:
    waiting for the notification queue's lock at commit is normal."""
    statements: list[sql.Composable] = [sql.SQL("SET LOCAL lock_timeout = 0")] if lift_lock_timeout else []
    notify = sql.SQL("NOTIFY {}, {}")
    statements += [notify.format(sql.Identifier(CHANNEL), sql.Literal(payload)) for payload in payloads]
    return sql.SQL("; ").join([*statements, sql.SQL("COMMIT")])


# -- documents --------------------------------------------------------------------------------------

PUT_DOCUMENT = """
    INSERT INTO tarefa_resources (kind, key, data) VALUES (%(kind)s, %(key)s, %(data)s)
    ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data
"""

ADD_DOCUMENT = """
    INSERT INTO tarefa_resources (kind, key, data) VALUES (%(kind)s, %(key)s, %(data)s)
    ON CONFLICT (kind, key) DO NOTHING
"""

GET_DOCUMENT = "SELECT data FROM tarefa_resources WHERE kind = %(kind)s AND key = %(key)s"

GET_DOCUMENT_FOR_UPDATE = GET_DOCUMENT + " FOR UPDATE"

# Several documents at once, all or none (see PgSteps._insert_documents).
INSERT_DOCUMENTS = """
    INSERT INTO tarefa_resources (kind, key, data)
    SELECT * FROM unnest(%(kinds)s::text[], %(keys)s::text[], %(data)s::jsonb[])
    ON CONFLICT (kind, key) DO NOTHING
    RETURNING key
"""

SAVEPOINT_DOCUMENTS = "SAVEPOINT tarefa_documents"

UNDO_DOCUMENTS = "ROLLBACK TO SAVEPOINT tarefa_documents; RELEASE SAVEPOINT tarefa_documents"

RELEASE_DOCUMENTS = "RELEASE SAVEPOINT tarefa_documents"

LIST_DOCUMENTS = "SELECT data FROM tarefa_resources WHERE kind = %(kind)s ORDER BY key"

DELETE_DOCUMENT = "DELETE FROM tarefa_resources WHERE kind = %(kind)s AND key = %(key)s"
