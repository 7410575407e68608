"""The pure Job model: transitions, timestamps, parsing."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tarefa import model
from tarefa.model import InvalidTransition, JobError, JobState

T0 = datetime(2026, 11, 28, 14, 0, 0, 123456, tzinfo=UTC)
LATER = T0 + timedelta(seconds=1)


def queued() -> model.Job:
    return model.new_job("op", now=T0, input={"x": 1})


def running(max_attempts: int = 1) -> model.Job:
    job = model.new_job("op", now=T0, max_attempts=max_attempts)
    return model.start(job, now=T0, worker="w", lease_expires=LATER)


def test_new_job_is_queued_with_equal_create_and_modified_times() -> None:
    job = queued()
    assert job.state is JobState.QUEUED
    assert job.create_time == job.last_modified == T0
    assert job.start_time is None and job.end_time is None
    assert len(job.id) == 22 and job.id.replace("-", "").replace("_", "").isalnum()


def test_ids_are_unique() -> None:
    assert len({model.new_job_id() for _ in range(10_000)}) == 10_000


def test_timestamps_strictly_increase_within_one_clock_tick() -> None:
    job = running()
    stamps = [job.last_modified]
    for i in range(5):
        job = model.report(job, now=T0, message=f"step {i}")
        stamps.append(job.last_modified)
    job = model.succeed(job, now=T0, result=None)
    stamps.append(job.last_modified)
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert stamps[-1] - stamps[0] == timedelta(microseconds=len(stamps) - 1)


def test_timestamps_never_go_back_when_the_clock_does() -> None:
    job = model.report(running(), now=LATER, message="a")
    earlier = model.report(job, now=T0, message="b")
    assert earlier.last_modified == job.last_modified + timedelta(microseconds=1)


def test_full_success_path() -> None:
    job = running()
    assert job.state is JobState.RUNNING and job.attempts == 1 and job.lease_owner == "w"
    job = model.report(job, now=LATER, message="half", progress=50)
    assert (job.message, job.progress) == ("half", 50)
    done = model.succeed(job, now=LATER, result={"ok": True})
    assert done.state is JobState.SUCCESS and done.result == {"ok": True}
    assert done.end_time == done.last_modified and done.progress == 100
    assert done.lease_owner is None and done.is_terminal


def test_failure_carries_the_error() -> None:
    job = model.fail(running(), now=LATER, error=JobError("boom", "It broke"))
    assert job.state is JobState.FAILURE and job.error == JobError("boom", "It broke")
    assert job.message == "It broke" and job.result is None


@pytest.mark.parametrize(
    "transition",
    [
        lambda j: model.start(j, now=LATER, worker="w", lease_expires=LATER),
        lambda j: model.report(j, now=LATER, message="x"),
        lambda j: model.succeed(j, now=LATER, result=1),
        lambda j: model.fail(j, now=LATER, error=JobError("x", "y")),
        lambda j: model.request_cancel(j, now=LATER),
        lambda j: model.lose(j, now=LATER),
    ],
)
def test_terminal_jobs_never_change(transition: object) -> None:
    for job in (
        model.succeed(running(), now=LATER, result=1),
        model.fail(queued(), now=LATER, error=JobError("a", "b")),
    ):
        with pytest.raises(InvalidTransition):
            transition(job)  # type: ignore[operator]


def test_queued_cannot_report_or_succeed() -> None:
    with pytest.raises(InvalidTransition):
        model.report(queued(), now=LATER, message="x")
    with pytest.raises(InvalidTransition):
        model.succeed(queued(), now=LATER, result=None)


def test_progress_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        model.report(running(), now=LATER, progress=101)


def test_cancel_queued_fails_at_once() -> None:
    job = model.request_cancel(queued(), now=LATER)
    assert job.state is JobState.FAILURE and job.error is not None and job.error.code == "cancelled"


def test_cancel_running_is_a_visible_request() -> None:
    job = running()
    asked = model.request_cancel(job, now=LATER)
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    assert asked.last_modified > job.last_modified
    assert model.request_cancel(asked, now=LATER) is asked


def test_lost_job_fails_unless_retry_safe() -> None:
    lost = model.lose(running(), now=LATER)
    assert lost.state is JobState.FAILURE and lost.error is not None and lost.error.code == "worker_lost"
    retried = model.lose(running(max_attempts=2), now=LATER)
    assert retried.state is JobState.QUEUED and retried.lease_owner is None
    again = model.start(retried, now=LATER, worker="w2", lease_expires=LATER)
    assert again.attempts == 2
    assert model.lose(again, now=LATER).state is JobState.FAILURE


def test_format_timestamp() -> None:
    assert model.format_timestamp(T0) == "2026-11-28T14:00:00.123456Z"
    assert model.format_timestamp(T0.replace(microsecond=0)) == "2026-11-28T14:00:00.000000Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T14:00:00.123456Z", T0),
        ("2026-11-28T14:00:00Z", T0.replace(microsecond=0)),
        ("2026-11-28T14:00:00.1Z", T0.replace(microsecond=100000)),
        ("2026-11-28T14:00:00.123456789Z", T0),
        ("2026-11-28T15:00:00.123456+01:00", T0),
        ("2026-11-28T09:30:00.123456-04:30", T0),
        ("2026-11-28t14:00:00.123456z", T0),
    ],
)
def test_parse_timestamp_any_precision_and_zone(text: str, expected: datetime) -> None:
    assert model.parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-11-28", "2026-11-28T14:00:00", "2026-13-28T14:00:00Z"])
def test_parse_timestamp_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        model.parse_timestamp(text)


def test_round_trip_of_microseconds() -> None:
    assert model.from_microseconds(model.to_microseconds(T0)) == T0


def test_a_forked_child_never_repeats_the_parents_ids() -> None:
    import os

    model.new_job_id()  # the pool now holds bytes the child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, model.new_job_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    assert len(child_id) == 22 and child_id != model.new_job_id()


def test_job_ids_never_begin_with_a_dash() -> None:
    from tarefa.model import new_job_id

    ids = [new_job_id() for _ in range(5000)]
    assert not [job_id for job_id in ids if job_id.startswith("-")]
    assert len(set(ids)) == len(ids) and {len(job_id) for job_id in ids} == {22}


def test_format_timestamp_of_another_zone_and_of_early_years() -> None:
    plus_two = datetime(2026, 11, 28, 16, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert model.format_timestamp(plus_two) == "2026-11-28T14:00:00.000005Z"
    early = datetime(7, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert model.format_timestamp(early) == "0007-01-02T03:04:05.000000Z"
    assert model.parse_timestamp(model.format_timestamp(early)) == early


def test_evolve_is_replace_and_every_transition_keeps_the_fields_it_does_not_change() -> None:
    job = dataclasses.replace(
        model.new_job("op", now=T0, input={"x": 1}, owner="alice", resource="/api/r", max_attempts=3,
                      callback={"url": "https://example.com/h", "events": "all"}),
        progress=7, result=None,
    )  # fmt: skip
    for name in [f.name for f in dataclasses.fields(model.Job)]:
        changed = {name: "other"}
        assert model.evolve(job, **changed) == dataclasses.replace(job, **changed)
    assert model.evolve(job) == job
    fixed = ("id", "operation", "create_time", "resource", "owner", "input", "max_attempts", "callback")
    started = model.start(job, now=T0, worker="w", lease_expires=LATER)
    ended = [
        model.succeed(started, now=LATER, result={"ok": 1}),
        model.fail(started, now=LATER, error=JobError("e", "m")),
        model.report(started, now=LATER, message="m", progress=50),
        model.request_cancel(started, now=LATER),
        model.lose(started, now=LATER),
    ]
    for changed in (started, *ended):
        assert {name: getattr(changed, name) for name in fixed} == {name: getattr(job, name) for name in fixed}
    assert ended[0].start_time == started.start_time and ended[0].attempts == started.attempts == 1
