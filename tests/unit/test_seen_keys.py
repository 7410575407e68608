"""The filter of keys seen (tarefa.store.seen_keys): never a false negative, few false positives."""

from __future__ import annotations

import asyncio
import random

import pytest

from tarefa.store import seen_keys
from tarefa.store.seen_keys import MIN_BITS, KeysSeen, SeenKeys


def test_every_pair_added_is_held_and_few_others_seem_to_be() -> None:
    rng = random.Random(7)
    added = [(rng.choice(["", "ana", "bea", "ça va"]), f"{rng.getrandbits(64):x}") for _ in range(50_000)]
    seen = SeenKeys.of(added, len(added))
    assert all(seen.may_hold(owner, key) for owner, key in added)
    others = [("ana", f"other-{n}") for n in range(50_000)]
    false = sum(seen.may_hold(owner, key) for owner, key in others)
    assert false < 50  # ~0.01 % at this fill; 0.2 % at 16 bits per pair


def test_a_pair_is_its_owner_and_its_key() -> None:
    seen = SeenKeys()
    seen.add("ana", "k")
    assert seen.may_hold("ana", "k")
    assert not seen.may_hold("bea", "k") and not seen.may_hold("ana", "k2") and not seen.may_hold("an", "ak")


def test_the_size_grows_with_the_keys_expected() -> None:
    assert len(SeenKeys()._bits) * 8 == MIN_BITS
    big = SeenKeys(expected=MIN_BITS)  # 16 bits each: 16 times the floor
    assert len(big._bits) * 8 == 16 * MIN_BITS


def test_a_filter_holding_more_pairs_than_it_was_sized_for_is_crowded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seen_keys, "MIN_BITS", 1024)  # 64 pairs at 16 bits each
    keys = KeysSeen(SeenKeys(), scanned=True)
    for n in range(64):
        keys.add("ana", f"k{n}")
    assert not keys.crowded
    keys.add("ana", "k64")
    assert keys.crowded


def test_a_scan_takes_over_with_what_it_may_have_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pairs of inserts in flight when a scan begins, of inserts that failed or were cancelled
    before, and every pair added while it runs are in the filter that takes over; the scan's own
    are too."""
    monkeypatch.setattr(seen_keys, "MIN_BITS", 1024)
    keys = KeysSeen(SeenKeys(), scanned=True)
    with pytest.raises(asyncio.CancelledError), keys.inserting("ana", "cancelled"):
        raise asyncio.CancelledError  # its insert may still commit, after the scan's snapshot
    with pytest.raises(ConnectionError), keys.inserting("ana", "failed"):
        raise ConnectionError("lost during the commit: it may have landed")
    with keys.inserting("ana", "in flight"):
        keys.begin_scan()
        assert not keys.crowded  # a scan is running: no second one
        keys.add("bea", "heard meanwhile")
    scanned = SeenKeys.of([("ana", "committed before")], 1)
    keys.end_scan(scanned)
    for owner, key in [
        ("ana", "cancelled"),
        ("ana", "in flight"),
        ("bea", "heard meanwhile"),
        ("ana", "committed before"),
    ]:
        assert keys.may_hold(owner, key), key
    assert keys.may_hold("ana", "failed")  # a failed insert may have committed all the same (a lost connection)


def test_a_failed_scan_leaves_the_filter_as_it_was_and_an_unscanned_one_holds_everything() -> None:
    keys = KeysSeen(SeenKeys(), scanned=False)
    assert keys.may_hold("ana", "anything")  # not filled from the store yet
    keys.add("ana", "k")
    keys.begin_scan()
    keys.end_scan(None)
    assert keys.may_hold("ana", "other") and not keys.crowded
    keys.begin_scan()
    keys.end_scan(SeenKeys())
    assert keys.scanned and not keys.may_hold("ana", "other")
