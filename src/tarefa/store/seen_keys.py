"""Which ``Idempotency-Key`` may have a job already, without a read (issue 11): a Bloom filter of
``(owner, key)`` pairs. SQLite is the only writer of its jobs (one process holds the file's lock);
PostgreSQL's filter also adds the pairs that other processes' notifications name, and answers only
while it hears them (:mod:`tarefa.store.postgres`, *Keys seen*).

Every keyed call looks its key up before its endpoint runs, to replay the first answer; nearly
every key is new. The filter answers "no job has it" with no read when the pair was never added,
and "maybe" otherwise, so the store looks it up. It has false positives (a lookup for nothing),
never a false negative, as long as every pair is added before its insert commits and the filter
starts from every keyed job in the store. A pair added for an insert that did not happen, or kept
after its job is purged, only costs a lookup. Past its size the filter answers "maybe" more often
(at 16 bits per pair and 4 probes, about 0.2 % of new keys; at 8, 2.4 %): it is never wrong.

Even where a pair was not added yet (two calls with one new key at once), the insert's own
conflict check answers the second call as a replay: the filter only spares the read.

A long-lived process adds far more keys than it found at open. :class:`KeysSeen` holds the
store's filter and grows it: once more pairs went in than it was sized for, the store scans its
keyed jobs again (purged ones are gone by then) into a filter sized for twice as many. A pair added
while that scan runs, the pair of every insert not yet ended when it began, and those of inserts
that failed or were cancelled (they may have committed all the same) are logged and
added to the new filter before it takes over: a key the scan's snapshot misses is one of those.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

PROBES = 4
BITS_PER_KEY = 16
MIN_BITS = 1 << 23  # 1 MiB: half a million keys at 16 bits each
UNSURE_KEPT = 10_000  # pairs of failed or cancelled inserts kept for the next scan's log
RESCAN_DELAY = 10.0  # seconds after a failed scan before the next one


class SeenKeys:
    """A Bloom filter of ``(owner, key)`` pairs sized for ``expected`` of them (at least half a million)."""

    __slots__ = ("_bits", "_mask", "added", "capacity")

    def __init__(self, expected: int = 0) -> None:
        size = MIN_BITS
        while size < expected * BITS_PER_KEY:
            size <<= 1
        self._bits = bytearray(size >> 3)
        self._mask = size - 1
        self.added = 0  # pairs added (a pair added twice counts twice)
        self.capacity = size // BITS_PER_KEY  # pairs it is sized for

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
        self.added += 1
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


class KeysSeen:
    """A store's filter of keys seen, and its growth (module doc). ``scanned``: the store has filled
    it from every keyed job (until then :meth:`may_hold` answers True)."""

    __slots__ = ("_filter", "_in_flight", "_log", "_retry_at", "_unsure", "scanned")

    def __init__(self, first: SeenKeys, *, scanned: bool) -> None:
        self._filter = first
        self._in_flight: Counter[tuple[str, str]] = Counter()  # pairs whose insert has not ended
        # pairs of inserts that failed or were cancelled: the insert may have committed, or still may
        self._unsure: deque[tuple[str, str]] = deque(maxlen=UNSURE_KEPT)
        self._log: list[tuple[str, str]] | None = None  # while a scan for the next filter runs
        self._retry_at = 0.0  # monotonic: no scan before (one failed)
        self.scanned = scanned

    def may_hold(self, owner: str, key: str) -> bool:
        return not self.scanned or self._filter.may_hold(owner, key)

    def add(self, owner: str, key: str) -> None:
        """A pair a committed (or committing) job holds."""
        self._filter.add(owner, key)
        if self._log is not None:
            self._log.append((owner, key))

    @contextmanager
    def inserting(self, owner: str, key: str) -> Iterator[None]:
        """Around an insert of ours: its pair is added before it commits, and is known to be in
        flight until it has ended. An insert that failed or was cancelled may have committed all
        the same (a connection lost during its commit): its pair is kept for the next scan's log."""
        pair = (owner, key)
        self.add(owner, key)
        self._in_flight[pair] += 1
        try:
            yield
        except BaseException:
            self._unsure.append(pair)
            raise
        finally:
            self._in_flight[pair] -= 1
            if not self._in_flight[pair]:
                del self._in_flight[pair]

    @property
    def crowded(self) -> bool:
        """More pairs went in than the filter was sized for, and no scan is running."""
        return self._log is None and self._filter.added > self._filter.capacity

    @property
    def due(self) -> bool:
        """A scan should begin now: the filter is not filled yet or is crowded, no scan is running,
        and none failed in the last :data:`RESCAN_DELAY` seconds."""
        return (
            self._log is None
            and (not self.scanned or self._filter.added > self._filter.capacity)
            and time.monotonic() >= self._retry_at
        )

    def begin_scan(self) -> None:
        """A scan of every keyed job begins after this: log what it may miss from now on."""
        self._log = [*self._in_flight, *self._unsure]

    def end_scan(self, scanned: SeenKeys | None) -> None:
        """The scan's filter (None: it failed) takes over, with the pairs logged since it began."""
        log, self._log = self._log, None
        if scanned is None or log is None:
            self._retry_at = time.monotonic() + RESCAN_DELAY
            return
        for owner, key in log:
            scanned.add(owner, key)
        self._filter, self.scanned = scanned, True
