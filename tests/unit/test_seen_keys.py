"""The filter of keys seen (tarefa.store.seen_keys): never a false negative, few false positives."""

from __future__ import annotations

import random

from tarefa.store.seen_keys import MIN_BITS, SeenKeys


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
