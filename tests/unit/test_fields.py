"""A job's fields are defined once (the model); every other list is derived from it or checked here."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path

from tarefa.http.wire import JOB_FIELDS, JobModel, job_to_wire
from tarefa.model import FIELDS, WIRE_FIELDS, Job, JobError, JobState, new_job, utcnow
from tarefa.store import columns
from tarefa.store.sqlite import CODEC, migrate


def full_job(state: JobState) -> Job:
    job = new_job("thing.make", now=utcnow(), input={"a": 1}, owner="alice", resource="/api/things/1")
    error = JobError("boom", "Bad") if state is JobState.FAILURE else None
    now = utcnow()
    return dataclasses.replace(
        job, state=state, progress=50, start_time=now, end_time=now, result={"ok": True}, error=error,
        lease_owner="w1", lease_expires=now, attempts=1, cancel_requested=True,
    )  # fmt: skip


def test_the_model_describes_every_field() -> None:
    assert [field.name for field in FIELDS] == [field.name for field in dataclasses.fields(Job)]
    assert all(field.kind in {"text", "int", "bool", "state", "time", "json", "error", "href"} for field in FIELDS)
    assert all(field.doc for field in WIRE_FIELDS)


def test_the_wire_format_and_the_openapi_model_follow_the_model() -> None:
    wire_names = [field.name for field in WIRE_FIELDS]
    assert list(JOB_FIELDS) == [*wire_names, "_links"]
    aliases = [info.alias or name for name, info in JobModel.model_fields.items()]
    assert aliases == [*wire_names, "_links"]
    for state in (JobState.SUCCESS, JobState.FAILURE):
        body = job_to_wire(full_job(state), "/api/jobs")
        assert set(body) <= set(JOB_FIELDS)
        JobModel.model_validate(body)  # what we send is what we document
    assert "result" in job_to_wire(full_job(JobState.SUCCESS), "/api/jobs")
    assert "error" in job_to_wire(full_job(JobState.FAILURE), "/api/jobs")


def test_the_sqlite_schema_has_a_column_for_every_field(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    migrate(conn)
    present = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    assert [name for name in present if name in columns.NAMES] == list(columns.NAMES)  # later ones: ADD COLUMN
    job = full_job(JobState.FAILURE)
    assert CODEC.decode(CODEC.encode(job)) == job


def test_the_postgresql_schema_names_every_column() -> None:
    from tarefa.store import postgres_sql

    created = re.search(r"CREATE TABLE tarefa_jobs \((.*?)\n    \);", postgres_sql.MIGRATIONS[0], re.S)
    assert created is not None
    declared = [
        line.split()[0] for line in created.group(1).strip().splitlines() if not line.strip().startswith("CONSTRAINT")
    ]
    added = re.findall(r"ALTER TABLE tarefa_jobs ADD COLUMN (\w+)", "".join(postgres_sql.MIGRATIONS[1:]))
    assert [name for name in [*declared, *added] if name in columns.NAMES] == list(columns.NAMES)


#: Where the client's Job keeps a wire field whose name it does not share.
CLIENT_NAMES = {"resource": "resource_href", "_links": "self_href"}


def test_the_clients_job_reads_every_wire_field() -> None:
    from tarefa.client import Job as ClientJob

    lazy = {name for name, value in vars(ClientJob).items() if isinstance(value, property)}  # timestamps
    names = {field.name for field in dataclasses.fields(ClientJob)} | lazy
    assert [name for name in JOB_FIELDS if CLIENT_NAMES.get(name, name) not in names] == []
    for state in (JobState.SUCCESS, JobState.FAILURE):
        job = full_job(state)
        parsed = ClientJob.from_wire(job_to_wire(job, "/api/jobs", admin=True))
        for field in WIRE_FIELDS:
            value = getattr(parsed, CLIENT_NAMES.get(field.name, field.name))
            expected = getattr(job, field.name)
            if field.name == "result" and state is JobState.FAILURE:
                expected = None  # sent only on success
            assert value == expected, field.name
        assert parsed.self_href == f"/api/jobs/{job.id}"


def test_the_codec_encodes_any_list_of_columns_and_keeps_a_few_plans() -> None:
    codec = columns.Codec(encoders={"json": lambda value: f"json:{value}"}, decoders={})
    job = new_job("op", now=utcnow(), input=[1])
    full = codec.encode(job)
    assert len(full) == len(columns.COLUMNS) and "json:[1]" in full
    for _ in range(20):  # a new list each time: encoded alike, not remembered beyond a few
        assert codec.encode(job, list(columns.MUTABLE_COLUMNS)) == codec.encode(job, columns.MUTABLE_COLUMNS)
    assert len(codec._plans) <= 8
