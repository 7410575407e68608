"""The change hub: long polls wake on changes, never miss one, and cost nothing while idle."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tarefa import model
from tarefa.model import Job
from tarefa.store import JobChange
from tarefa.waiting import ChangeHub

pytestmark = pytest.mark.anyio


class Jobs:
    """A stand-in for the store's read: counts the reads."""

    def __init__(self, job: Job | None) -> None:
        self.job = job
        self.reads = 0

    async def read(self) -> Job | None:
        self.reads += 1
        return self.job


def running() -> Job:
    now = model.utcnow()
    return model.start(model.new_job("op", now=now), now=now, worker="w", lease_expires=now)


async def test_change_wakes_the_waiter() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    waiter = asyncio.create_task(hub.wait_for_change(jobs.job.id, jobs.read, baseline=None, timeout=5))  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
    changed = model.report(jobs.job, now=model.utcnow(), message="moved")  # type: ignore[arg-type]
    hub.publish([JobChange(changed.id, changed)])
    assert await asyncio.wait_for(waiter, 1) == changed
    assert jobs.reads == 1 and hub.waiting == 0


async def test_change_between_read_and_wait_is_not_lost() -> None:
    hub = ChangeHub()
    job = running()
    changed = model.report(job, now=model.utcnow(), message="moved")

    async def read_then_change() -> Job:
        # the change commits after the read returned, before the waiter sleeps
        hub.publish([JobChange(job.id, changed)])
        return job

    result = await asyncio.wait_for(hub.wait_for_change(job.id, read_then_change, baseline=None, timeout=5), 1)
    assert result == changed


async def test_one_change_fans_out_to_every_waiter_without_reads() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    job = jobs.job
    assert job is not None
    waiters = [
        asyncio.create_task(hub.wait_for_change(job.id, jobs.read, baseline=None, timeout=5)) for _ in range(500)
    ]
    await asyncio.sleep(0.05)
    assert hub.waiting == 500 and jobs.reads == 500  # one read each, when the request arrives
    changed = model.report(job, now=model.utcnow(), progress=10)
    hub.publish([JobChange(job.id, changed)])
    results = await asyncio.wait_for(asyncio.gather(*waiters), 2)
    assert all(result == changed for result in results)
    assert jobs.reads == 500 and hub.waiting == 0


async def test_timeout_answers_the_unchanged_job_without_another_read() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await hub.wait_for_change(jobs.job.id, jobs.read, baseline=None, timeout=0.3)  # type: ignore[union-attr]
    elapsed = loop.time() - started
    assert result == jobs.job and jobs.reads == 1
    assert 0.29 <= elapsed < 1.0


async def test_a_stale_or_equal_change_does_not_end_the_wait() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    job = jobs.job
    assert job is not None
    waiter = asyncio.create_task(hub.wait_for_change(job.id, jobs.read, baseline=None, timeout=0.3))
    await asyncio.sleep(0.01)
    hub.publish([JobChange(job.id, job)])  # same last_modified: not a change
    await asyncio.sleep(0.05)
    assert not waiter.done()
    assert await waiter == job


async def test_baseline_in_the_past_answers_at_once() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    job = jobs.job
    assert job is not None
    result = await asyncio.wait_for(
        hub.wait_for_change(job.id, jobs.read, baseline=job.last_modified - timedelta(microseconds=1), timeout=5), 1
    )
    assert result == job


async def test_baseline_in_the_future_waits_for_a_later_change() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    job = jobs.job
    assert job is not None
    baseline = job.last_modified + timedelta(seconds=10)
    waiter = asyncio.create_task(hub.wait_for_change(job.id, jobs.read, baseline=baseline, timeout=0.3))
    await asyncio.sleep(0.01)
    hub.publish([JobChange(job.id, model.report(job, now=model.utcnow(), message="still before the baseline"))])
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await waiter


async def test_terminal_job_answers_at_once() -> None:
    hub = ChangeHub()
    done = model.succeed(running(), now=model.utcnow(), result=1)
    jobs = Jobs(done)
    assert await asyncio.wait_for(hub.wait_for_change(done.id, jobs.read, baseline=None, timeout=60), 1) == done


async def test_deleted_during_the_wait_is_none() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    waiter = asyncio.create_task(hub.wait_for_change(jobs.job.id, jobs.read, baseline=None, timeout=5))  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
    hub.publish([JobChange(jobs.job.id, None)])  # type: ignore[union-attr]
    assert await asyncio.wait_for(waiter, 1) is None


async def test_unknown_job_is_none() -> None:
    hub, jobs = ChangeHub(), Jobs(None)
    assert await hub.wait_for_change("nope", jobs.read, baseline=None, timeout=5) is None
    assert hub.waiting == 0


async def test_changes_of_other_jobs_do_not_wake() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    other = running()
    waiter = asyncio.create_task(hub.wait_for_change(jobs.job.id, jobs.read, baseline=None, timeout=0.2))  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
    hub.publish([JobChange(other.id, model.report(other, now=model.utcnow(), message="x"))])
    assert await waiter == jobs.job


async def test_close_answers_every_waiter_now() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    waiters = [
        asyncio.create_task(hub.wait_for_change(jobs.job.id, jobs.read, baseline=None, timeout=60))  # type: ignore[union-attr]
        for _ in range(3)
    ]
    await asyncio.sleep(0.01)
    hub.close()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [jobs.job] * 3


async def test_idle_waiters_have_no_timers_but_their_own() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    loop = asyncio.get_running_loop()
    waiters = [
        asyncio.create_task(hub.wait_for_change(jobs.job.id, jobs.read, baseline=None, timeout=30))  # type: ignore[union-attr]
        for _ in range(100)
    ]
    await asyncio.sleep(0.05)
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    # nothing re-arms or polls while they wait: the same timers, and no read
    assert len(loop._scheduled) == scheduled  # type: ignore[attr-defined]
    assert jobs.reads == 100
    hub.close()
    await asyncio.gather(*waiters)


async def test_many_waits_share_their_timers_and_none_is_left_after() -> None:
    hub, jobs = ChangeHub(), Jobs(running())
    job = jobs.job
    assert job is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiters = [
        asyncio.create_task(hub.wait_for_change(job.id, jobs.read, baseline=None, timeout=0.3)) for _ in range(1000)
    ]
    await asyncio.sleep(0.05)
    assert hub.waiting == 1000 and 1 <= len(hub.deadlines) <= 10  # one timer per 10 ms slice, not per wait
    changed = model.report(job, now=model.utcnow(), progress=10)
    half = waiters[:500]
    hub.publish([JobChange(job.id, changed)])  # every waiter of the job wakes: no timer is left
    assert all(result == changed for result in await asyncio.wait_for(asyncio.gather(*half), 2))
    await asyncio.gather(*waiters)
    assert len(hub.deadlines) == 0 and hub.waiting == 0
    # timeouts: each answers after its time, at most one slice (and the loop's lag) late
    started = loop.time()
    results = await asyncio.gather(
        *(hub.wait_for_change(job.id, jobs.read, baseline=None, timeout=0.2) for _ in range(200))
    )
    elapsed = loop.time() - started
    assert all(result == job for result in results) and 0.2 <= elapsed < 0.4
    assert len(hub.deadlines) == 0


async def test_a_shared_stores_hub_answers_long_polls_only_from_a_copy_at_least_as_new() -> None:
    hub = ChangeHub()
    hub.remember(False)  # a shared store: its changes may reach the hub late
    job = running()
    hub.publish([JobChange(job.id, job)])
    assert hub.known(job.id) is None  # a plain read goes to the store
    assert hub.known_since(job.id, job.last_modified) == job  # equal: wait on it
    assert hub.known_since(job.id, job.last_modified - timedelta(microseconds=1)) == job  # newer: answer it
    assert hub.known_since(job.id, job.last_modified + timedelta(microseconds=1)) is None  # stale: read


async def test_a_shared_stores_hub_keeps_the_newest_copy_whatever_the_order_of_its_changes() -> None:
    hub = ChangeHub()
    hub.remember(False)
    job = running()
    later = model.report(job, now=job.last_modified + timedelta(milliseconds=1), message="moved")
    hub.publish([JobChange(later.id, later)])  # another process's change, heard first
    hub.publish([JobChange(job.id, job)])  # this process's own earlier commit, emitted after it
    assert hub.known_since(job.id, job.last_modified) == later
    hub.publish([JobChange(job.id, None)])  # deleted
    assert hub.known_since(job.id, job.last_modified) is None


# -- parked without a task (ChangeHub.hold) -----------------------------------------------------


async def test_a_held_wait_answers_the_change_the_deletion_and_the_timeout_through_done() -> None:
    from tarefa.waiting import HeldWait

    hub, job = ChangeHub(), running()
    answers: list[Job | None] = []
    held = await hub.hold(job.id, Jobs(job).read, baseline=None, timeout=5, done=answers.append)
    assert isinstance(held, HeldWait) and hub.waiting == 1 and len(hub.deadlines) == 1
    changed = model.report(job, now=model.utcnow(), message="moved")
    hub.publish([JobChange(job.id, changed)])
    await asyncio.sleep(0.01)
    assert answers == [changed] and hub.waiting == 0 and len(hub.deadlines) == 0

    held = await hub.hold(job.id, Jobs(changed).read, baseline=None, timeout=5, done=answers.append)
    hub.publish([JobChange(job.id, None)])  # deleted while parked
    await asyncio.sleep(0.01)
    assert answers == [changed, None] and hub.waiting == 0

    held = await hub.hold(job.id, Jobs(changed).read, baseline=None, timeout=0.05, done=answers.append)
    await asyncio.sleep(0.2)
    assert answers == [changed, None, changed] and hub.waiting == 0 and len(hub.deadlines) == 0


async def test_a_held_wait_answers_at_once_when_nothing_is_to_wait_for() -> None:
    hub, job = ChangeHub(), running()
    answers: list[Job | None] = []
    older = job.last_modified - timedelta(seconds=1)
    assert await hub.hold(job.id, Jobs(job).read, baseline=older, timeout=5, done=answers.append) == job
    assert await hub.hold("nope", Jobs(None).read, baseline=None, timeout=5, done=answers.append) is None
    assert answers == [] and hub.waiting == 0


async def test_a_cancelled_held_wait_never_answers_and_leaves_nothing_behind() -> None:
    from tarefa.waiting import HeldWait

    hub, job = ChangeHub(), running()
    answers: list[Job | None] = []
    held = await hub.hold(job.id, Jobs(job).read, baseline=None, timeout=5, done=answers.append)
    assert isinstance(held, HeldWait)
    held.cancel()
    assert hub.waiting == 0
    hub.publish([JobChange(job.id, model.report(job, now=model.utcnow(), message="moved"))])
    await asyncio.sleep(0.01)
    assert answers == [] and len(hub.deadlines) == 0

    held = await hub.hold(job.id, Jobs(job).read, baseline=None, timeout=5, done=answers.append)
    assert isinstance(held, HeldWait)
    hub.publish([JobChange(job.id, model.report(job, now=model.utcnow(), message="moved"))])
    held.cancel()  # woken, its callback not yet run: still no answer
    await asyncio.sleep(0.01)
    assert answers == [] and hub.waiting == 0 and len(hub.deadlines) == 0


async def test_close_answers_held_waits_at_once() -> None:
    hub, job = ChangeHub(), running()
    answers: list[Job | None] = []
    await hub.hold(job.id, Jobs(job).read, baseline=None, timeout=60, done=answers.append)
    hub.close()
    await asyncio.sleep(0.01)
    assert answers == [job] and hub.waiting == 0
