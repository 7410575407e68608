"""The SQL of the SQLite store: schema migrations and the statements it runs.

Timestamps are integers (microseconds since the Unix epoch, UTC); JSON values are text.
"""

from __future__ import annotations

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
)

JOB_COLUMNS = (
    "id, operation, state, message, progress, create_time, start_time, end_time, last_modified, "
    "result, error_code, error_message, resource, owner, input, cancel_requested, attempts, "
    "max_attempts, lease_owner, lease_expires"
)

SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"

SELECT_BY_IDEMPOTENCY = (
    f"SELECT {JOB_COLUMNS}, request_hash, answer_status FROM jobs WHERE owner = ? AND idempotency_key = ?"
)

SELECT_RESOURCE_HOLDER = "SELECT id FROM jobs WHERE resource_key = ? AND state IN ('queued', 'running')"

INSERT_JOB = f"""
    INSERT INTO jobs ({JOB_COLUMNS}, resource_key, idempotency_key, request_hash)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

UPDATE_JOB = """
    UPDATE jobs SET state = ?, message = ?, progress = ?, start_time = ?, end_time = ?,
        last_modified = ?, result = ?, error_code = ?, error_message = ?, cancel_requested = ?,
        attempts = ?, lease_owner = ?, lease_expires = ?
    WHERE id = ?
"""

UPDATE_ANSWER_STATUS = "UPDATE jobs SET answer_status = ? WHERE id = ?"

SELECT_QUEUED = f"""
    SELECT {JOB_COLUMNS} FROM jobs
    WHERE state = 'queued' AND operation IN (SELECT value FROM json_each(?))
    ORDER BY create_time, id LIMIT ?
"""

SELECT_RUNNING = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running'"

SELECT_EXPIRED = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires < ?"

SELECT_HELD = f"""
    SELECT {JOB_COLUMNS} FROM jobs
    WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))
"""

RENEW_LEASES = """
    UPDATE jobs SET lease_expires = ?
    WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))
    RETURNING id
"""

DELETE_JOB = "DELETE FROM jobs WHERE id = ?"

PURGE_JOBS = "DELETE FROM jobs WHERE state IN ('success', 'failure') AND end_time < ? RETURNING id"

PUT_RESOURCE = "INSERT OR REPLACE INTO resources (kind, key, data) VALUES (?, ?, ?)"
PUT_RESOURCE_IF_ABSENT = "INSERT OR IGNORE INTO resources (kind, key, data) VALUES (?, ?, ?)"
GET_RESOURCE = "SELECT data FROM resources WHERE kind = ? AND key = ?"
LIST_RESOURCES = "SELECT data FROM resources WHERE kind = ? ORDER BY key"
DELETE_RESOURCE = "DELETE FROM resources WHERE kind = ? AND key = ?"


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
