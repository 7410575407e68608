"""ChangeHub.wait_for_any: "any change this owner may see after token T", with no store read."""

from __future__ import annotations

import asyncio

import pytest

from tarefa import model
from tarefa.store import JobChange
from tarefa.waiting import ChangeHub

pytestmark = pytest.mark.anyio


def change(owner: str) -> JobChange:
    job = model.new_job("op", now=model.utcnow(), owner=owner)
    return JobChange(job.id, job)


async def test_a_waiter_wakes_only_for_changes_its_owner_may_see() -> None:
    hub = ChangeHub()
    token = await hub.wait_for_any("alice", None, 5)  # no token: at once
    alice = asyncio.create_task(hub.wait_for_any("alice", token, 5))
    admin = asyncio.create_task(hub.wait_for_any(None, hub.token(None), 5))
    await asyncio.sleep(0.01)
    assert hub.waiting == 2
    hub.publish([change("bob")])
    assert await asyncio.wait_for(admin, 1) != token
    await asyncio.sleep(0.01)
    assert not alice.done()  # bob's job is none of alice's business
    hub.publish([JobChange("gone", None)])  # a deletion: its owner is unknown, so everyone looks
    assert await asyncio.wait_for(alice, 1) != token
    assert hub.waiting == 0


async def test_a_change_between_token_and_wait_is_not_lost_and_timeouts_keep_the_token() -> None:
    hub = ChangeHub()
    token = hub.token("alice")
    assert await hub.wait_for_any("alice", token, 0.05) == token
    hub.publish([change("alice")])
    assert await asyncio.wait_for(hub.wait_for_any("alice", token, 5), 0.5) != token
    assert await hub.wait_for_any("alice", "other.7", 5) == hub.token("alice")  # another process's token


async def test_closing_answers_every_waiter() -> None:
    hub = ChangeHub()
    waiter = asyncio.create_task(hub.wait_for_any(None, hub.token(None), 30))
    await asyncio.sleep(0.01)
    hub.close()
    assert await asyncio.wait_for(waiter, 1) == hub.token(None)
