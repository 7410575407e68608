"""Which ``Idempotency-Key`` may have a job already, without a read (issue 11): a Bloom filter of
``(owner, key)`` pairs for a store that is the only writer of its jobs (SQLite: one process holds
the file's lock).

Every keyed call looks its key up before its endpoint runs, to replay the first answer; nearly
every key is new. The filter answers "no job has it" with no read when the pair was never added,
and "maybe" otherwise, so the store looks it up. It has false positives (a lookup for nothing),
never a false negative, as long as every pair is added before its insert commits and the filter
starts from every keyed job in the store. A pair added for an insert that did not happen, or kept
after its job is purged, only costs a lookup. Past its size the filter answers "maybe" more often
(at 16 bits per pair and 4 probes, about 0.2 % of new keys; at 8, 2.4 %): it is never wrong.

Even where a pair was not added yet (two calls with one new key at once), the insert's own
conflict check answers the second call as a replay: the filter only spares the read.
"""

from __future__ import annotations

from collections.abc import Iterable

PROBES = 4
BITS_PER_KEY = 16
MIN_BITS = 1 << 23  # 1 MiB: half a million keys at 16 bits each


class SeenKeys:
    """A Bloom filter of ``(owner, key)`` pairs sized for ``expected`` of them (at least half a million)."""

    __slots__ = ("_bits", "_mask")

    def __init__(self, expected: int = 0) -> None:
        size = MIN_BITS
        while size < expected * BITS_PER_KEY:
            size <<= 1
        self._bits = bytearray(size >> 3)
        self._mask = size - 1

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]], count: int) -> SeenKeys:
        """A filter holding ``pairs`` (``count`` of them), sized for twice as many."""
        seen = cls(2 * count)
        for owner, key in pairs:
            seen.add(owner, key)
        return seen

    def _start(self, owner: str, key: str) -> tuple[int, int]:
        # Python's own hash of the pair (salted per process: the filter lives in this process
        # only), split into a start and an odd step: PROBES positions by double hashing.
        h = hash((owner, key)) & 0xFFFF_FFFF_FFFF_FFFF
        return h, (h >> 32) | 1

    def add(self, owner: str, key: str) -> None:
        bits, mask = self._bits, self._mask
        h, step = self._start(owner, key)
        for _ in range(PROBES):
            position = h & mask
            bits[position >> 3] |= 1 << (position & 7)
            h += step

    def may_hold(self, owner: str, key: str) -> bool:
        """False: no job of this store has this pair. True: it may (look it up)."""
        bits, mask = self._bits, self._mask
        h, step = self._start(owner, key)
        for _ in range(PROBES):
            position = h & mask
            if not bits[position >> 3] & (1 << (position & 7)):
                return False
            h += step
        return True
