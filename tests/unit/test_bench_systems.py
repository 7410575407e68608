"""The bench's deployments of tarefa: each round waits for its own processes."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from bench.systems.tarefa_systems import work


def _started_lines(workdir: Path) -> int:
    return sum(log.read_text().count("worker started") for log in workdir.glob("worker-0*.log"))


def test_a_second_round_waits_for_its_own_worker(tmp_path: Path) -> None:
    """A worker of an earlier round leaves "worker started" in its log: the next round's worker
    (same workdir, same index) is waited for until it says so itself, not found ready at once."""
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    with ExitStack() as stack:
        work(stack, tmp_path, store, 2, 0)
    assert _started_lines(tmp_path) == 1
    with ExitStack() as stack:
        work(stack, tmp_path, store, 2, 0)
        assert _started_lines(tmp_path) == 2  # this round's worker has started, not only the first
