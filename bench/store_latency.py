"""The embedded store alone, in this process: one caller's jobs through ``SQLiteStore`` (accept and
claim in one commit, then the finish in another, ``synchronous=FULL`` unless told), with a pause
between jobs as a caller's think time, so that the writer is idle between them.

    python -m bench.store_latency [--jobs 3000] [--think-ms 0.5] [--synchronous full|normal]

Printed: p50, p90 and p99 of a job's two commits as the caller sees them (µs), and the store's CPU
per job. What it isolates: the commit path (thread hand-offs, the writer's work, fsync, checkpoints),
without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tarefa.model import JobState, new_job, utcnow
from tarefa.store import Outcome
from tarefa.store.base import Claim
from tarefa.store.sqlite import SQLiteStore

WARM_UP = 300


async def measure(path: Path, jobs: int, think: float, synchronous: str) -> tuple[list[float], float]:
    """Each job's latency (s), oldest first, and the process's CPU seconds per job."""
    store = SQLiteStore(path, synchronous=synchronous)
    await store.open()
    latencies: list[float] = []
    try:
        cpu0 = 0.0
        for n in range(WARM_UP + jobs):
            if n == WARM_UP:
                cpu0 = time.process_time()
            job = new_job("bench.op", now=utcnow(), input={"n": n})
            began = time.perf_counter()
            created = await store.create_job(job, claim=Claim("bench", 30.0))
            assert created.claimed is not None
            assert await store.finish_job(job.id, "bench", Outcome(JobState.SUCCESS, result={"n": n})) is not None
            if n >= WARM_UP:
                latencies.append(time.perf_counter() - began)
            await asyncio.sleep(think)
        cpu = (time.process_time() - cpu0) / jobs
    finally:
        await store.close()
    return latencies, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--think-ms", type=float, default=0.5)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="tarefa-store-latency-")) / "s.db"
    latencies, cpu = asyncio.run(measure(path, args.jobs, args.think_ms / 1000, args.synchronous))
    ranked = sorted(latencies)

    def q(p: float) -> float:
        return ranked[min(len(ranked) - 1, int(len(ranked) * p))] * 1e6

    print(f"synchronous={args.synchronous}: {len(ranked)} jobs, two commits each: p50 {q(0.5):.0f} µs, "
          f"p90 {q(0.9):.0f} µs, p99 {q(0.99):.0f} µs; {cpu * 1e6:.0f} µs CPU per job (every thread)")  # fmt: skip


if __name__ == "__main__":
    main()
